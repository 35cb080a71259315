"""Heatmaps over the whole film: the explainer's maps of the model's input view, placed where that view lies.

The model sees the centre crop of the film resized so its shorter side is the eval resize side
(:mod:`cxr_vit.data.transforms`); the explainer's maps cover that crop only. Here they are put back on the film's
own grid (0 outside the crop), so an overlay drawn on the film points at the right place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..constants import LABEL2ID
from ..evaluation.explainers import ExplainerError, get_explainer
from ..prediction import Predictor


def film_heatmaps(predictor: Predictor, film: Image.Image, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """label -> map in ``[0, 1]`` with the film's size (rows x columns), from ``predictor``'s explainer."""
    if not labels:
        return {}
    if predictor.explainer is None:
        raise ExplainerError(predictor.explainer_source)
    classifier = predictor.classifier
    squares = classifier.squares([film])
    indices = torch.as_tensor([[LABEL2ID[label] for label in labels]])
    maps = get_explainer(predictor.explainer)(predictor.model, classifier.inputs(squares), indices)
    maps = maps.float().cpu().numpy()[0]
    geometry = classifier.geometry
    width, height = film.size
    side = geometry.input_size * min(width, height) / geometry.resize_size  # the view's side in film pixels
    left, top = round((width - side) / 2), round((height - side) / 2)
    box = round(side)
    placed = {}
    for label, view_map in zip(labels, maps, strict=True):
        full = np.zeros((height, width), dtype=np.float32)
        resized = np.asarray(Image.fromarray(view_map.astype(np.float32), mode="F").resize((box, box)), np.float32)
        rows = slice(max(top, 0), min(top + box, height))
        cols = slice(max(left, 0), min(left + box, width))
        full[rows, cols] = resized[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
        placed[label] = np.clip(full, 0.0, 1.0)
    return placed
