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

``write_planted_boxes`` is the localized variant for explainers: each positive finding's grating fills only a box
at a random place of the film (random per film, so the place says nothing about the finding and the model must
find the pattern wherever it is, as above), and the boxes are written as NIH's box list, so the right answer of
the pointing game is known.
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


def grating(finding: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``finding``'s grating over an H x W image, values in [-1, 1], at a random phase."""
    height, width = shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    period, orientation = GRATINGS[finding]
    angle = np.deg2rad(orientation)
    phase = rng.uniform(0.0, 2 * np.pi)
    return np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)


def half_contrast(image: np.ndarray) -> np.ndarray:
    """The film at half contrast around mid-grey (float), leaving room for the gratings."""
    return 0.5 * image.astype(np.float64) + 64.0


def to_uint8(planted: np.ndarray) -> np.ndarray:
    return np.clip(np.round(planted), 0, 255).astype(np.uint8)


def draw_gratings(image: np.ndarray, findings: list[str], rng: np.random.Generator) -> np.ndarray:
    """``image`` (H x W uint8) at half contrast with the grating of each of ``findings`` added."""
    planted = half_contrast(image)
    for finding in findings:
        planted += AMPLITUDE * grating(finding, image.shape, rng)
    return to_uint8(planted)


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


# ---- localized variant: each finding's grating inside a box, boxes in the official box-list format --------------

BOX_PREVALENCE = 0.3  # per boxed finding, at most MAX_BOXES of them per image
MAX_BOXES = 2
BOX_SIDES = (22, 30)  # pixels at 64 px, inclusive range of a box's side
BOX_MARGIN = 4  # pixels kept clear at the border: timm's eval crop (64 of 71 px) cuts ~3.6 px of a 64 px film
BOX_AMPLITUDE = 60.0
RELEASE_SIZE = 1024  # the box list's coordinates are those of the released 1024x1024 PNGs
BOX_CSV_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


def _place_boxes(count: int, size: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Up to ``count`` non-overlapping (x, y, w, h) squares inside the margin (fewer if they do not fit)."""
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(count):
        for _attempt in range(100):
            side = int(rng.integers(BOX_SIDES[0], BOX_SIDES[1] + 1))
            x, y = (int(v) for v in rng.integers(BOX_MARGIN, size - BOX_MARGIN - side + 1, size=2))
            if all(x + side <= bx or bx + bw <= x or y + side <= by or by + bh <= y for bx, by, bw, bh in boxes):
                boxes.append((x, y, side, side))
                break
    return boxes


def write_planted_boxes(
    source_images: Path, source_csv: Path, output_dir: Path, seed: int = 0
) -> tuple[Path, Path, Path]:
    """Planted films whose findings sit at known places; returns ``(images_dir, labels_csv, bbox_csv)``.

    Only the 8 findings of NIH's box list are planted (each positive with ``BOX_PREVALENCE``, at most
    ``MAX_BOXES`` per film); each positive finding's grating is drawn inside its own box, a square at a random
    place that overlaps no other box of the film, and nowhere else. The labels CSV has the bundled CSV's
    format; the boxes go to ``BBox_List_2017.csv`` in the release's format (its header, its finding names such
    as "Infiltrate", coordinates in the 1024x1024 space), so the real ``--bbox_csv`` path reads them. The other
    six findings are never positive (no AUC for them), "No Finding" is set exactly when no box is drawn.
    """
    from cxr_vit.evaluation.localization import BBOX_LABELS, BOXED_FINDINGS

    release_names = {label: name for name, label in BBOX_LABELS.items()}
    frame = pd.read_csv(source_csv, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    images_dir = output_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels, box_rows = [], [BOX_CSV_HEADER]
    for name in frame["Image Index"]:
        pixels = np.asarray(Image.open(source_images / name).convert("L"))
        height, width = pixels.shape
        wanted = [label for label in BOXED_FINDINGS if rng.random() < BOX_PREVALENCE]
        if len(wanted) > MAX_BOXES:
            wanted = sorted(rng.choice(wanted, size=MAX_BOXES, replace=False), key=BOXED_FINDINGS.index)
        boxes = _place_boxes(len(wanted), min(height, width), rng)
        planted = half_contrast(pixels)
        for finding, (bx, by, bw, bh) in zip(wanted, boxes, strict=False):
            inside = np.zeros(pixels.shape, dtype=bool)
            inside[by : by + bh, bx : bx + bw] = True
            planted += BOX_AMPLITUDE * grating(finding, pixels.shape, rng) * inside
            sx, sy = RELEASE_SIZE / width, RELEASE_SIZE / height
            box_rows.append(f"{name},{release_names[finding]},{bx * sx},{by * sy},{bw * sx},{bh * sy}")
        Image.fromarray(to_uint8(planted)).save(images_dir / name)
        drawn = wanted[: len(boxes)]
        labels.append("|".join(drawn) if drawn else NO_FINDING)
    frame["Finding Labels"] = labels
    labels_csv = output_dir / source_csv.name
    frame.to_csv(labels_csv, index=False)
    bbox_csv = output_dir / "BBox_List_2017.csv"
    bbox_csv.write_text("\n".join(box_rows) + "\n")
    return images_dir, labels_csv, bbox_csv
