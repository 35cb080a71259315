"""A map-style dataset over an image cache that reads a whole batch per call.

A ``DataLoader`` with ``batch_size=B`` hands a dataset that has ``__getitems__`` the batch's B indices in one
call, so one sorted fancy index into the memory map replaces B Python-level ``__getitem__`` calls and a
collate. Sorting turns the random batch into a forward sweep over the file; the rows then go back into the order
asked for, the sampler's: a distributed evaluation pads its last batch with repeated rows at the end, and
``gather_for_metrics`` drops exactly those, so a sorted batch would drop real rows and keep the repeats.

Batches hold uint8 pixels (4x less to pin and copy than float32); :mod:`cxr_vit.data.gpu_augment` turns
them into model inputs on the training device. Samplers, sharding, ``set_epoch`` and resume skipping stay
the ``DataLoader``'s and the ``Trainer``'s own.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import IMAGES_FILE, LABELS_FILE, read_meta


class CachedImageDataset(Dataset):
    """Batches of ``pixel_values`` (B x S x S uint8) and ``labels`` (B x 15 float32) from a cache folder.

    The arrays are opened lazily with ``mmap_mode="r"`` in whichever process reads, and never pickled, so a
    DataLoader worker (fork or spawn) holds file mappings, not a copy of the images.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        meta = read_meta(self.directory)
        if meta is None:
            raise FileNotFoundError(f"no image cache in {self.directory} (build it with cxr_vit.data.cache)")
        self.num_rows = int(meta["num_rows"])
        self.image_size = int(meta["resize_size"])
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.directory / IMAGES_FILE, mmap_mode="r")
        return self._images

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.load(self.directory / LABELS_FILE, mmap_mode="r")
        return self._labels

    def __len__(self) -> int:
        return self.num_rows

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows, requested = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)  # sorted, each once
        return {
            "pixel_values": torch.from_numpy(self.images[rows][requested]),
            "labels": torch.from_numpy(self.labels[rows][requested]),
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: value[0] for name, value in self.__getitems__([index]).items()}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_images"] = state["_labels"] = None  # a pickled memmap would be a full in-memory copy
        return state


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DataLoader ``collate_fn`` for :class:`CachedImageDataset`: its ``__getitems__`` already batched."""
    return batch
