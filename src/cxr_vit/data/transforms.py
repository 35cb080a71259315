"""The one preprocessing every image goes through: training and evaluation, both input pipelines, prediction.

Per image, on the CPU: any X-ray -> 8-bit grayscale -> timm's eval resize (shorter side to
``S = floor(input_size / crop_pct)``, the model's own interpolation) -> the ``S x S`` square around the centre, as a
uint8 array. The image cache stores exactly these arrays; the ``datasets`` pipeline, evaluation and prediction make
them on the fly. Per batch, on the training device (:class:`cxr_vit.data.gpu_augment.BatchImageTransform`): eval
takes the centre ``input_size`` crop and normalises; training augments the same ``S x S`` images.

The square is placed so that the device's centre crop lands on the pixels torchvision's ``CenterCrop`` would take
from the resized image, so the two halves together equal timm's eval transform (what ``AutoImageProcessor`` and
``pipeline`` apply) exactly, for square and non-square images alike (tested): a reported metric is what a user
gets from the stock clients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data.transforms import str_to_interp_mode

from .images import to_grayscale_uint8

DEFAULT_CROP_PCT = 0.875  # timm's default when a pretrained_cfg has none


@dataclass(frozen=True)
class EvalGeometry:
    """What decides the pixels a model sees: its input side, timm's eval resize side and the interpolation."""

    input_size: int
    resize_size: int
    interpolation: str

    def key(self) -> dict[str, Any]:
        """What an image cache must match to be reused (every setting that changes its pixels)."""
        return {"resize_size": self.resize_size, "interpolation": self.interpolation, "crop": "center"}


def eval_geometry(data_config: dict[str, Any]) -> EvalGeometry:
    """The geometry of timm's eval transform for ``data_config`` (``cxr_vit.modeling.data_config``).

    Only what every timm classifier's default config uses is supported: a square input and the ``center`` crop
    mode; anything else raises instead of silently preprocessing differently from timm.
    """
    height, width = data_config["input_size"][-2:]
    if height != width:
        raise ValueError(f"cxr-vit needs a square model input, got {height}x{width}")
    crop_mode = data_config.get("crop_mode") or "center"
    if crop_mode != "center":
        raise ValueError(f"cxr-vit reproduces timm's 'center' eval crop, not crop_mode {crop_mode!r}")
    resize_size = math.floor(height / (data_config.get("crop_pct") or DEFAULT_CROP_PCT))
    if resize_size < height:
        raise ValueError(f"crop_pct {data_config.get('crop_pct')} > 1 would pad the image; not supported")
    return EvalGeometry(int(height), resize_size, data_config.get("interpolation") or "bicubic")


def _centre_offset(length: int, crop: int) -> int:
    return int(round((length - crop) / 2.0))  # torchvision CenterCrop's rounding


def crop_offset(geometry: EvalGeometry) -> int:
    """Where the model's ``input_size`` crop starts (top and left) inside an ``S x S`` square."""
    return _centre_offset(geometry.resize_size, geometry.input_size)


def model_view(square: np.ndarray, geometry: EvalGeometry) -> Image.Image:
    """The pixels the model sees of an ``S x S`` square (its eval crop), as a grayscale image for drawing on."""
    start, size = crop_offset(geometry), geometry.input_size
    return Image.fromarray(np.ascontiguousarray(square[start : start + size, start : start + size]), mode="L")


def resize_for_model(image: Image.Image, geometry: EvalGeometry) -> np.ndarray:
    """One X-ray (any PIL mode) as the ``S x S`` uint8 square that holds the model's centre crop."""
    gray = to_grayscale_uint8(image)
    size, side = geometry.input_size, geometry.resize_size
    resized = TF.resize(gray, side, interpolation=str_to_interp_mode(geometry.interpolation))
    width, height = resized.size
    # Offsets chosen so that the centre crop of the square is the centre crop of the whole resized image.
    inner = crop_offset(geometry)
    top = min(max(_centre_offset(height, size) - inner, 0), height - side)
    left = min(max(_centre_offset(width, size) - inner, 0), width - side)
    return np.array(resized.crop((left, top, left + side, top + side)), dtype=np.uint8)


class ModelImages:
    """``Dataset.with_transform`` callable: X-rays (PIL, any mode) -> ``pixel_values`` uint8 squares + labels."""

    def __init__(self, geometry: EvalGeometry):
        self.geometry = geometry

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        output = {
            "pixel_values": [torch.from_numpy(resize_for_model(image, self.geometry)) for image in batch["image"]]
        }
        if "labels" in batch:
            output["labels"] = [torch.as_tensor(labels, dtype=torch.float32) for labels in batch["labels"]]
        return output


def collate_images(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-image uint8 squares (and labels) into the batches the device transform takes."""
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.stack([example["labels"] for example in examples])
    return batch
