"""A typical notebook recipe, the benchmark's baseline (not used for training).

Per image: ``cv2.imread`` of the 1024x1024 PNG as 3-channel BGR, ``cvtColor`` to RGB, then torchvision's
``ToPILImage, Resize((224, 224)), RandomHorizontalFlip, RandomRotation(20), ToTensor, Normalize(ImageNet)``;
``DataLoader(batch_size=16, shuffle=True)`` with no workers; ``timm.create_model("vit_base_patch16_224")``
with 15 outputs, ``Adam(lr=1e-4)``, ``BCEWithLogitsLoss``, fp32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

try:  # the notebook's decoder; optional (the `bench` extra), PIL stands in without it
    import cv2
except ImportError:
    cv2 = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NOTEBOOK_BATCH_SIZE = 16
NOTEBOOK_LEARNING_RATE = 1e-4
NOTEBOOK_MODEL_NAME = "vit_base_patch16_224"


def notebook_transform(size: int = 224) -> transforms.Compose:
    """The notebook's train transform."""
    return transforms.Compose(
        [
            transforms.ToPILImage(),
            transforms.Resize((size, size)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(20),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def decoder_name() -> str:
    return f"cv2 {cv2.__version__}" if cv2 is not None else "PIL (OpenCV not installed)"


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The notebook's ``cv2.imread`` + ``cvtColor(BGR2RGB)``; PIL's decode when OpenCV is not installed."""
    if cv2 is not None:
        return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class NotebookDataset(Dataset):
    """The notebook's ``ChestXRayDataset``: (image tensor, multi-hot labels) per PNG path."""

    def __init__(self, paths: Sequence[str | os.PathLike], labels: np.ndarray, transform: transforms.Compose):
        self.paths, self.labels, self.transform = list(paths), np.asarray(labels, dtype=np.float32), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        return self.transform(read_rgb(self.paths[index])), self.labels[index]
