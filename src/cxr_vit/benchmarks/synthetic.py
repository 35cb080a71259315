"""Synthetic NIH-like chest films, for benchmarks that must run without the 42 GB release.

Decode time depends on how much a PNG compresses, so the images imitate what makes real films cost what they
cost: 1024x1024 8-bit grayscale with smooth anatomy-like structure (lung fields, spine, heart, ribs) plus
sensor noise, about 550 KB as a PNG like the real ones. They carry real NIH file names and label rows, so
the prepare step and the label parser see the real formats.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

NOISE_LEVEL = 3.2  # grey levels; sets the PNG size: 3.2 gives ~550 KB at 1024 px


def synthetic_xray(seed: int, size: int = 1024, noise: float = NOISE_LEVEL) -> np.ndarray:
    """A (size, size) uint8 frontal-chest-like image; the same seed gives the same image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = 60 + 120 * y  # brighter towards the abdomen
    for center in (0.32, 0.68):  # dark lung fields
        center += rng.normal(0, 0.02)
        distance = ((x - center) / 0.17) ** 2 + ((y - 0.45) / 0.3) ** 2
        image -= 55 * np.exp(-(distance**2))
    image += 70 * np.exp(-(((x - 0.5) / 0.06) ** 2))  # spine and mediastinum
    image += 40 * np.exp(-(((x - 0.55) / 0.12) ** 2 + ((y - 0.62) / 0.12) ** 2))  # heart
    ribs = np.sin((y * 14 + 2.5 * (x - 0.5) ** 2 + rng.uniform(0, 6)) * np.pi)
    image += 10 * ribs * (np.abs(x - 0.5) > 0.08)
    blobs = Image.fromarray(rng.normal(0, 1, (16, 16)).astype(np.float32))
    image += 12 * np.asarray(blobs.resize((size, size), Image.Resampling.BICUBIC))
    image += rng.normal(0, noise, (size, size)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_synthetic_nih(
    output_dir: str | os.PathLike, labels_csv: str | os.PathLike, count: int, size: int = 1024
) -> tuple[Path, Path]:
    """Write ``count`` synthetic PNGs named after the first rows of a real NIH CSV, and that CSV's rows.

    Returns ``(images_dir, labels_csv)`` under ``output_dir``, ready for ``prepare_dataset``.
    """
    rows = pd.read_csv(labels_csv, dtype=str, keep_default_na=False).head(count)
    if len(rows) < count:
        raise ValueError(f"{labels_csv} has only {len(rows)} rows, {count} images were asked for")
    images_dir = Path(output_dir) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(rows["Image Index"]):
        Image.fromarray(synthetic_xray(index, size)).save(images_dir / name, format="PNG")
    csv_path = Path(output_dir) / Path(labels_csv).name
    rows.to_csv(csv_path, index=False)
    return images_dir, csv_path
