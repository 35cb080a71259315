"""Multi-label metrics the chest X-ray literature reports: per-label ROC-AUC and AUPRC, and their macro averages.

The headline is ``auc_macro``: the mean ROC-AUC over the 14 findings ("No Finding" excluded), as in
Wang et al. 2017 and CheXNet. ``auc_macro_15`` includes "No Finding". sklearn does the math.

One rule for a label whose targets hold a single class (no ROC curve exists): it has no AUC ("n/a"), it is left
out of every macro average, and it is counted (``num_labels_without_auc``) and named in a warning. The Trainer's
metrics, the evaluation report and the model card all take their numbers from :func:`label_scores`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from transformers import EvalPrediction

from .constants import FINDINGS, LABEL2ID, LABELS

logger = logging.getLogger(__name__)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def finite_or_none(value: float | None) -> float | None:
    """A number for a JSON report: None where it is missing or not finite (JSON has no NaN)."""
    return float(value) if value is not None and np.isfinite(value) else None


@dataclass
class LabelScores:
    """Per-label ROC-AUC and average precision in canonical order; NaN where a label has one class only."""

    auc: np.ndarray
    auprc: np.ndarray
    num_images: int

    @property
    def labels_without_auc(self) -> list[str]:
        return [label for label, value in zip(LABELS, self.auc, strict=True) if not np.isfinite(value)]

    def macro(self, values: np.ndarray | None = None, labels: Sequence[str] = FINDINGS) -> float:
        """Mean of ``values`` (default: the AUCs) over ``labels`` that have one; NaN if none has."""
        values = self.auc if values is None else values
        defined = [values[LABEL2ID[label]] for label in labels if np.isfinite(values[LABEL2ID[label]])]
        return float(np.mean(defined)) if defined else float("nan")


def label_scores(probabilities: np.ndarray, targets: np.ndarray, warn: bool = True) -> LabelScores:
    """ROC-AUC and AUPRC of each of the 15 labels from ``(n, 15)`` scores and multi-hot targets.

    ``warn=False`` for callers that report labels without an AUC themselves (the subgroups' small groups)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    if probabilities.shape != targets.shape or probabilities.ndim != 2 or probabilities.shape[1] != len(LABELS):
        raise ValueError(f"expected two (n, {len(LABELS)}) arrays, got {probabilities.shape} and {targets.shape}")
    auc = np.full(len(LABELS), np.nan)
    auprc = np.full(len(LABELS), np.nan)
    for index in range(len(LABELS)):
        column = targets[:, index]
        if len(column) and column.min() != column.max():
            auc[index] = roc_auc_score(column, probabilities[:, index])
            auprc[index] = average_precision_score(column, probabilities[:, index])
    scores = LabelScores(auc, auprc, len(targets))
    if warn and scores.labels_without_auc:
        logger.warning(
            "no AUC for %s: only one class present in these %d images", scores.labels_without_auc, len(targets)
        )
    return scores


def multilabel_metrics(probabilities: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Per-label ROC-AUC (``auc_<Label>``), ``auc_macro`` (14 findings), ``auc_macro_15``, ``auprc_macro``.

    A label without an AUC has no ``auc_<Label>`` key (the model card shows it as n/a) and is counted in
    ``num_labels_without_auc``.
    """
    scores = label_scores(probabilities, targets)
    metrics = {f"auc_{label}": float(v) for label, v in zip(LABELS, scores.auc, strict=True) if np.isfinite(v)}
    metrics["auc_macro"] = scores.macro()
    metrics["auc_macro_15"] = scores.macro(labels=LABELS)
    metrics["auprc_macro"] = scores.macro(scores.auprc)
    metrics["num_labels_without_auc"] = len(scores.labels_without_auc)
    return metrics


def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """``Trainer`` hook: logits and multi-hot labels -> :func:`multilabel_metrics` plus ``bce``.

    ``bce`` is the unweighted BCE over exactly the evaluated images. The Trainer's own ``loss`` averages
    per-batch means, which shifts slightly with batch composition (e.g. the number of processes).
    """
    logits = eval_prediction.predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    metrics = multilabel_metrics(sigmoid(logits), eval_prediction.label_ids)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(eval_prediction.label_ids, dtype=torch.float64)
    )
    metrics["bce"] = float(bce)
    return metrics
