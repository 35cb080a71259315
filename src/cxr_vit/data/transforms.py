"""Train / eval image transforms and the batch collator.

Eval uses timm's own eval transform for the model's ``pretrained_cfg`` (resize by ``crop_pct``, center crop,
normalise), the same one ``AutoImageProcessor`` and ``pipeline`` apply, so reported metrics match what
users get at inference. Train adds mild geometric augmentation only: small crops, rotations and shifts are
standard for chest films, while horizontal flips are debated (the heart sits on the left) and are off.
"""

from __future__ import annotations

from typing import Any

import timm.data
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode


def create_eval_transform(data_config: dict[str, Any]) -> T.Compose:
    """timm's eval transform for ``data_config`` (see ``cxr_vit.modeling.data_config``)."""
    return timm.data.create_transform(**data_config, is_training=False)


def create_train_transform(
    data_config: dict[str, Any],
    scale: tuple[float, float] = (0.75, 1.0),
    degrees: float = 10.0,
    translate: float = 0.05,
) -> T.Compose:
    """Random resized crop + small affine jitter, then the pretrained normalisation."""
    size = tuple(data_config["input_size"][-2:])
    interpolation = InterpolationMode(data_config.get("interpolation", "bicubic"))
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=scale, ratio=(0.9, 1.1), interpolation=interpolation),
            T.RandomAffine(degrees=degrees, translate=(translate, translate), interpolation=interpolation),
            T.ToTensor(),
            T.Normalize(mean=data_config["mean"], std=data_config["std"]),
        ]
    )


class ImageTransform:
    """``Dataset.with_transform`` callable: PIL X-rays (any mode) -> ``pixel_values`` (3 channels) + labels."""

    def __init__(self, image_transform: T.Compose):
        self.image_transform = image_transform

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        output = {"pixel_values": [self.image_transform(to_rgb(image)) for image in batch["image"]]}
        if "labels" in batch:
            output["labels"] = [torch.as_tensor(labels, dtype=torch.float32) for labels in batch["labels"]]
        return output


def to_rgb(image: Image.Image) -> Image.Image:
    """3-channel copy of a grayscale X-ray: ImageNet backbones expect RGB input."""
    return image if image.mode == "RGB" else image.convert("RGB")


def collate_fn(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.stack([example["labels"] for example in examples])
    return batch
