"""Operating thresholds: Youden's J on the validation split, the metrics at them, and where they are stored.

J (the ROC point maximising sensitivity + specificity - 1), unlike max-F1, does not depend on prevalence, so a rare
finding such as Hernia is not pushed to a threshold no positive passes. Thresholds are chosen on the validation
split only, never on the evaluated one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, roc_curve

from ..atomic import write_json_atomic
from ..constants import LABELS, THRESHOLDS_INFO_KEY, THRESHOLDS_KEY

logger = logging.getLogger(__name__)

THRESHOLD_RULE = "Youden's J (max sensitivity + specificity - 1) on the validation split"
FALLBACK_THRESHOLD = 0.5


def choose_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Per-label Youden's J threshold (predict positive when probability >= threshold).

    Give this the *validation* predictions. Each label is chosen over the rows where it is known (NaN: missing); a
    label with one class there, or none known, has no ROC curve: it gets 0.5 and a warning.
    """
    targets = np.asarray(targets, dtype=np.float64)
    thresholds = {}
    for index, label in enumerate(LABELS):
        known = np.isfinite(targets[:, index])
        column = targets[known, index]
        if not column.size or column.min() == column.max():
            why = "one class" if column.size else "no annotated image"
            logger.warning("%s has %s in the validation split: threshold %.1f", label, why, FALLBACK_THRESHOLD)
            thresholds[label] = FALLBACK_THRESHOLD
            continue
        fpr, tpr, cuts = roc_curve(column, probabilities[known, index])
        best = int(np.argmax((tpr - fpr)[1:])) + 1  # cuts[0] is +inf: "nothing positive" is no operating point
        thresholds[label] = float(cuts[best])
    return thresholds


def operating_points(
    probabilities: np.ndarray, targets: np.ndarray, thresholds: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Sensitivity, specificity, PPV and F1 per label at ``thresholds``, over the rows where the label is known (NaN
    where a ratio is 0/0)."""
    targets = np.asarray(targets, dtype=np.float64)
    results = {}
    for index, label in enumerate(LABELS):
        known = np.isfinite(targets[:, index])
        called = (probabilities[known, index] >= thresholds[label]).astype(int)
        (tn, fp), (fn, tp) = (
            confusion_matrix(targets[known, index].astype(int), called, labels=[0, 1])
            if known.any()
            else np.zeros((2, 2))
        )
        results[label] = {
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "ppv": _ratio(tp, tp + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        }
    return results


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def threshold_config_entries(thresholds: dict[str, float], info: dict) -> dict:
    """The config.json keys that carry the thresholds (``cxr_vit.prediction.load_thresholds`` reads them)."""
    return {THRESHOLDS_KEY: {label: float(thresholds[label]) for label in LABELS}, THRESHOLDS_INFO_KEY: info}


THRESHOLDS_FILE = "thresholds.json"


def write_thresholds(path: str | os.PathLike, thresholds: dict[str, float], info: dict) -> Path:
    """``thresholds.json``: the per-label thresholds in canonical order and how they were chosen."""
    path = Path(path)
    path.write_text(json.dumps({"thresholds": {label: float(thresholds[label]) for label in LABELS}, **info}, indent=2))
    return path


def store_thresholds(model_dir: str | os.PathLike, entries: dict) -> Path:
    """Add the threshold keys to ``model_dir/config.json`` in place, every other key untouched."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text())
    config.update(entries)
    return write_json_atomic(path, config, sort_keys=True)  # never a half-written config.json
