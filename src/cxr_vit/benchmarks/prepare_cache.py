"""Preparation and the image cache: images/s of ``prepare_dataset`` and of the uint8 memmap cache build."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.cache import IMAGES_FILE, ensure_cache, write_cache
from ..data.cached_dataset import CachedImageDataset
from ..data.transforms import EvalGeometry


def measure_prepare(images_dir: Path, labels_csv: Path, work: Path, image_size: int):
    """``prepare_dataset`` wall time (one process) and the prepared splits as one dataset."""
    import datasets

    from ..data import load_dataset_as_is, prepare_dataset

    output = work / "prepared"
    start = time.perf_counter()
    report = prepare_dataset(images_dir, labels_csv, output, image_size=image_size)
    seconds = time.perf_counter() - start
    count = sum(report.split_rows.values())
    splits = load_dataset_as_is(str(output), cache_root=work / "hf_cache")  # a kept --work_dir is rewritten
    dataset = datasets.concatenate_datasets([splits[name] for name in splits])
    return {"images": count, "seconds": seconds, "img_per_s": count / seconds, "image_size": image_size}, dataset


def measure_cache_build(dataset, work: Path, geometry: EvalGeometry) -> tuple[dict[str, Any], Path]:
    image_size = geometry.resize_size
    directory = work / "cache" / f"all-{image_size}px"
    start = time.perf_counter()
    ensure_cache(dataset, directory, geometry)
    seconds = time.perf_counter() - start
    megabytes = (directory / IMAGES_FILE).stat().st_size / 2**20
    info = {"images": len(dataset), "seconds": seconds, "img_per_s": len(dataset) / seconds}
    return {**info, "image_size": image_size, "megabytes": megabytes, "threads": min(8, os.cpu_count() or 1)}, directory


def repeat_cache(source: Path, directory: Path, megabytes: int) -> Path:
    """The source cache's images repeated to at least ``megabytes``: a benchmark with 32 images would otherwise
    read every batch from the CPU's own caches, which no real dataset does."""
    images = CachedImageDataset(source).images
    count = max(len(images), megabytes * 2**20 // images[0].size)

    def read_images(start: int, stop: int) -> list[Image.Image]:
        return [Image.fromarray(np.asarray(images[i % len(images)])) for i in range(start, stop)]

    side = images.shape[-1]  # already squares of the eval resize side: stored as they are
    return write_cache(directory, read_images, np.zeros((count, 15), np.float32), EvalGeometry(side, side, "bicubic"))
