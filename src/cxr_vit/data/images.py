"""Decode X-ray files of any PNG/JPEG flavour into 8-bit grayscale, the form every later stage expects."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image


def to_grayscale_uint8(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit grayscale (mode ``L``).

    Real NIH PNGs are already ``L``; a few are RGBA, third-party copies are RGB, and DICOM exports are often
    16-bit. 16-bit values are mapped from the full 0..65535 range, so intensities keep their meaning.
    """
    if image.mode == "L":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        full_scale = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array * (255.0 / full_scale) + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image.convert("L")


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Shrink so the shorter side is ``size`` (aspect kept); never enlarge."""
    width, height = image.size
    shorter = min(width, height)
    if shorter <= size:
        return image
    scale = size / shorter
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: a fast box pre-shrink before the filter; the result is visually identical.
    return image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def load_xray(path: str | os.PathLike, image_size: int | None = None) -> Image.Image:
    """Open, fully decode and normalise one X-ray to mode ``L`` (optionally shrunk); raises on broken files."""
    with Image.open(path) as image:
        image.load()  # decode now, so a truncated file fails here, naming this path
        gray = to_grayscale_uint8(image)
    return resize_shorter_side(gray, image_size) if image_size else gray


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
