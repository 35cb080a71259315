"""Multi-label metrics the chest X-ray literature reports: per-label ROC-AUC and AUPRC, and their macro averages.

The headline is ``auc_macro``: the mean ROC-AUC over the 14 findings ("No Finding" excluded), as in
Wang et al. 2017 and CheXNet. ``auc_macro_15`` includes "No Finding". sklearn does the math.

One rule for a label whose targets hold a single class (no ROC curve exists): it has no AUC ("n/a"), it is left
out of every macro average, and it is counted (``num_labels_without_auc``) and named in a warning. The Trainer's
metrics, the evaluation report and the model card all take their numbers from :func:`label_scores`.

A target that is NaN is **missing**: a source that does not annotate a label (or gave an uncertain value) says
nothing about it, which is not "negative". Every metric skips missing entries: a label's AUC is computed over the
rows where that label is known, and a label with no known row is *not annotated* (no AUC, for that reason, not
"one class only"). The loss skips them too (:func:`masked_bce_with_logits`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from transformers import EvalPrediction

from .constants import FINDINGS, LABEL2ID, LABELS

logger = logging.getLogger(__name__)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def finite_or_none(value: float | None) -> float | None:
    """A number for a JSON report: None where it is missing or not finite (JSON has no NaN)."""
    return float(value) if value is not None and np.isfinite(value) else None


NOT_ANNOTATED = "not annotated"
ONE_CLASS = "one class only"


def masked_bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE-with-logits averaged over the known entries of ``targets``; a NaN target (missing) adds no loss and no
    gradient. With every entry known it is ``F.binary_cross_entropy_with_logits``; with none known, 0."""
    known = ~torch.isnan(targets)
    losses = F.binary_cross_entropy_with_logits(
        logits, torch.where(known, targets, 0.0), pos_weight=pos_weight, reduction="none"
    )
    return torch.where(known, losses, 0.0).sum() / known.sum().clamp(min=1)


@dataclass
class LabelScores:
    """Per-label ROC-AUC and average precision in canonical order, and how many rows know each label.

    AUC and AUPRC are NaN where a label has no known row (:data:`NOT_ANNOTATED`) or one class among its known rows
    (:data:`ONE_CLASS`); :meth:`reason` says which.
    """

    auc: np.ndarray
    auprc: np.ndarray
    num_images: int
    known: np.ndarray  # (15,) rows with a known (non-NaN) target per label
    positives: np.ndarray  # (15,) known positives per label

    def reason(self, label: str) -> str | None:
        """Why ``label`` has no AUC (None when it has one)."""
        index = LABEL2ID[label]
        if np.isfinite(self.auc[index]):
            return None
        return NOT_ANNOTATED if self.known[index] == 0 else ONE_CLASS

    @property
    def labels_without_auc(self) -> list[str]:
        """Annotated labels with one class only among their known rows."""
        return [label for label in LABELS if self.reason(label) == ONE_CLASS]

    @property
    def labels_not_annotated(self) -> list[str]:
        return [label for label in LABELS if self.reason(label) == NOT_ANNOTATED]

    def macro(self, values: np.ndarray | None = None, labels: Sequence[str] = FINDINGS) -> float:
        """Mean of ``values`` (default: the AUCs) over ``labels`` that have one; NaN if none has."""
        values = self.auc if values is None else values
        defined = [values[LABEL2ID[label]] for label in labels if np.isfinite(values[LABEL2ID[label]])]
        return float(np.mean(defined)) if defined else float("nan")


def label_scores(probabilities: np.ndarray, targets: np.ndarray, warn: bool = True) -> LabelScores:
    """ROC-AUC and AUPRC of each of the 15 labels from ``(n, 15)`` scores and multi-hot targets (NaN: missing),
    each over the rows where that label is known.

    ``warn=False`` for callers that report labels without an AUC themselves (the subgroups' small groups)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if probabilities.shape != targets.shape or probabilities.ndim != 2 or probabilities.shape[1] != len(LABELS):
        raise ValueError(f"expected two (n, {len(LABELS)}) arrays, got {probabilities.shape} and {targets.shape}")
    auc = np.full(len(LABELS), np.nan)
    auprc = np.full(len(LABELS), np.nan)
    known = np.isfinite(targets)
    for index in range(len(LABELS)):
        column, scores = targets[known[:, index], index], probabilities[known[:, index], index]
        if len(column) and column.min() != column.max():
            auc[index] = roc_auc_score(column, scores)
            auprc[index] = average_precision_score(column, scores)
    positives = np.where(known, targets, 0.0).sum(axis=0).astype(np.int64)
    scores = LabelScores(auc, auprc, len(targets), known.sum(axis=0), positives)
    if warn and scores.labels_without_auc:
        logger.warning(
            "no AUC for %s: only one class present in these %d images", scores.labels_without_auc, len(targets)
        )
    if warn and scores.labels_not_annotated and len(targets):
        logger.info("no AUC for %s: not annotated in these %d images", scores.labels_not_annotated, len(targets))
    return scores


def multilabel_metrics(probabilities: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Per-label ROC-AUC (``auc_<Label>``), ``auc_macro`` (14 findings), ``auc_macro_15``, ``auprc_macro``.

    A label without an AUC has no ``auc_<Label>`` key (the model card shows it as n/a) and is counted in
    ``num_labels_without_auc`` (one class only) or, where some are, ``num_labels_not_annotated``.
    """
    scores = label_scores(probabilities, targets)
    metrics = {f"auc_{label}": float(v) for label, v in zip(LABELS, scores.auc, strict=True) if np.isfinite(v)}
    metrics["auc_macro"] = scores.macro()
    metrics["auc_macro_15"] = scores.macro(labels=LABELS)
    metrics["auprc_macro"] = scores.macro(scores.auprc)
    metrics["num_labels_without_auc"] = len(scores.labels_without_auc)
    if scores.labels_not_annotated:
        metrics["num_labels_not_annotated"] = len(scores.labels_not_annotated)
    return metrics


def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """``Trainer`` hook: logits and multi-hot labels -> :func:`multilabel_metrics` plus ``bce``.

    ``bce`` is the unweighted BCE over exactly the evaluated images (their known labels). The Trainer's own ``loss``
    averages per-batch means, which shifts slightly with batch composition (e.g. the number of processes).
    """
    logits = eval_prediction.predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    metrics = multilabel_metrics(sigmoid(logits), eval_prediction.label_ids)
    bce = masked_bce_with_logits(
        torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(eval_prediction.label_ids, dtype=torch.float64)
    )
    metrics["bce"] = float(bce)
    return metrics
