"""Planted-signal NIH data: real X-rays carrying a learnable, label-specific pattern for each positive finding.

Each of the 14 findings owns a sinusoidal grating (one of three periods times one of five orientations, 30 degrees
apart so the training rotations cannot confuse them); an image positive for a finding carries that grating,
at a random phase, over the whole film. The findings are drawn independently (30% prevalence each) and
"No Finding" is set exactly when none is, so every label has plenty of positives. Patients, ages, sexes and views
stay the bundled CSV's real ones, so the splits are real patient-wise splits.

Why gratings and not a mark at a finding-specific place: a randomly initialised ViT starts with near-zero position
embeddings and barely tells positions apart for hundreds of steps, while a pattern's presence is visible to it
from the first step, whichever patch it lands in and however the augmentation shifts it.

``shuffle_labels=True`` keeps the same images but shuffles the CSV's "Finding Labels" column across rows: labels
and patterns no longer agree, and a model can learn nothing (its AUCs land near 0.5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxr_vit.constants import FINDINGS, NO_FINDING

PERIODS = (7.0, 10.0, 15.0)  # pixels at the 64 px of the bundled images
ORIENTATIONS = (30.0, 60.0, 90.0, 120.0, 150.0)  # degrees; none near the films' vertical edges
GRATINGS = dict(zip(FINDINGS, [(p, o) for p in PERIODS for o in ORIENTATIONS], strict=False))
AMPLITUDE = 28.0  # grey levels per grating
PREVALENCE = 0.3


def draw_gratings(image: np.ndarray, findings: list[str], rng: np.random.Generator) -> np.ndarray:
    """``image`` (H x W uint8) at half contrast with the grating of each of ``findings`` added."""
    height, width = image.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planted = 0.5 * image.astype(np.float64) + 64.0
    for finding in findings:
        period, orientation = GRATINGS[finding]
        angle = np.deg2rad(orientation)
        phase = rng.uniform(0.0, 2 * np.pi)
        planted += AMPLITUDE * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)
    return np.clip(np.round(planted), 0, 255).astype(np.uint8)


def write_planted_nih(
    source_images: Path, source_csv: Path, output_dir: Path, seed: int = 0, shuffle_labels: bool = False
) -> tuple[Path, Path]:
    """Write planted images and their label CSV (the bundled CSV's format); returns ``(images_dir, csv)``."""
    frame = pd.read_csv(source_csv, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    positives = rng.random((len(frame), len(FINDINGS))) < PREVALENCE
    findings = [[name for name, on in zip(FINDINGS, row, strict=True) if on] for row in positives]
    images_dir = output_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for name, image_findings in zip(frame["Image Index"], findings, strict=True):
        pixels = np.asarray(Image.open(source_images / name).convert("L"))
        Image.fromarray(draw_gratings(pixels, image_findings, rng)).save(images_dir / name)
    labels = ["|".join(names) if names else NO_FINDING for names in findings]
    if shuffle_labels:
        labels = list(rng.permutation(labels))
    frame["Finding Labels"] = labels
    csv = output_dir / source_csv.name
    frame.to_csv(csv, index=False)
    return images_dir, csv
