"""Multi-label metrics the chest X-ray literature reports: per-label ROC-AUC and macro averages.

The headline is ``auc_macro``: the mean ROC-AUC over the 14 findings ("No Finding" excluded), as in
Wang et al. 2017 and CheXNet. ``auc_macro_15`` includes "No Finding". sklearn does the math.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from transformers import EvalPrediction

from .constants import FINDINGS, LABELS

logger = logging.getLogger(__name__)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def multilabel_metrics(probabilities: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Per-label ROC-AUC (``auc_<Label>``), ``auc_macro`` (14 findings), ``auc_macro_15``, ``auprc_macro``.

    A label whose targets hold one class only has no defined AUC: it is left out of the per-label keys and
    the averages, counted in ``num_labels_without_auc`` and named in a warning, never a crash.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    if probabilities.shape != targets.shape or probabilities.shape[-1] != len(LABELS):
        raise ValueError(f"expected two (n, {len(LABELS)}) arrays, got {probabilities.shape} and {targets.shape}")
    auc, auprc = {}, {}
    for index, label in enumerate(LABELS):
        column = targets[:, index]
        if column.min() == column.max():
            continue
        auc[label] = float(roc_auc_score(column, probabilities[:, index]))
        auprc[label] = float(average_precision_score(column, probabilities[:, index]))
    missing = [label for label in LABELS if label not in auc]
    if missing:
        logger.warning("no AUC for %s: only one class present in these %d images", missing, len(targets))
    metrics = {f"auc_{label}": value for label, value in auc.items()}
    findings = [auc[label] for label in FINDINGS if label in auc]
    metrics["auc_macro"] = float(np.mean(findings)) if findings else float("nan")
    metrics["auc_macro_15"] = float(np.mean(list(auc.values()))) if auc else float("nan")
    finding_auprc = [auprc[label] for label in FINDINGS if label in auprc]
    metrics["auprc_macro"] = float(np.mean(finding_auprc)) if finding_auprc else float("nan")
    metrics["num_labels_without_auc"] = len(missing)
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
