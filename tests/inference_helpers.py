"""Test helpers: a tiny random-init cxr-vit model on disk, a folder of every X-ray file flavour, scripts as modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxr_vit.constants import LABELS
from cxr_vit.evaluation import store_thresholds, threshold_config_entries
from cxr_vit.modeling import create_model, save_model

TINY_ARCH = "vit_tiny_patch16_224"
TINY_SIZE = 64


def save_tiny_model(folder: Path, thresholds: dict[str, float] | None = None, seed: int = 0) -> Path:
    """A random-init ViT-Tiny at 64 px saved as scripts/train.py saves models, optionally with thresholds."""
    torch.manual_seed(seed)
    save_model(create_model(TINY_ARCH, pretrained=False, image_size=TINY_SIZE), folder)
    if thresholds is not None:
        store_thresholds(folder, threshold_config_entries(thresholds, {"rule": "set by the test"}))
    return folder


def only_positive(label: str) -> dict[str, float]:
    """Thresholds under which ``label`` is always positive and every other label never is."""
    return {name: (0.0 if name == label else 1.0 + 1e-6) for name in LABELS}


def write_mixed_folder(source: Path, folder: Path) -> dict[str, Path]:
    """One real grayscale X-ray as 8-bit L, RGB JPEG, RGBA, 16-bit PNGs (nested), plus a corrupt PNG and a note."""
    gray = Image.open(source)
    gray.load()
    (folder / "nested" / "deeper").mkdir(parents=True)
    files = {
        "gray": folder / "gray.png",
        "rgb": folder / "nested" / "rgb.JPG",
        "rgba": folder / "nested" / "rgba.png",
        "16bit": folder / "nested" / "deeper" / "sixteen.png",
        "corrupt": folder / "nested" / "corrupt.png",
    }
    gray.save(files["gray"])
    gray.convert("RGB").save(files["rgb"], quality=95)
    gray.convert("RGBA").save(files["rgba"])
    Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257).save(files["16bit"])  # full 16-bit range
    files["corrupt"].write_bytes(source.read_bytes()[:1500])  # a truncated PNG
    (folder / "notes.txt").write_text("not an image")
    return files


def load_script(path: Path):
    """A script (scripts/*.py, app.py) as a module, to call its main() in-process: faster than a subprocess."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
