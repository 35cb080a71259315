"""Patient-bootstrap statistics: per-label AUC/AUPRC intervals and the 14-finding macro AUC interval.

Confidence intervals resample *patients*, not images: follow-up films of one patient are correlated, so an
image bootstrap understates the spread. A resample draws as many patients as the split has, with
replacement, and pools their images: each image is weighted by how often its patient was drawn (the same
numbers as copying the images, without the copies). A resample in which a label has a single class has no AUC
for that label and is left out of its interval; how many were used is reported. A missing (NaN) target is skipped:
each label is scored over the images where it is known, in every resample. Point estimates come from
sklearn; the resamples from a vectorised equivalent that the tests check against sklearn (1,000 resamples of
the 25,596-image official test list take ~20 s instead of minutes of per-call sklearn overhead).

The subgroups (:mod:`cxr_vit.evaluation.subgroups`) and the report (:mod:`cxr_vit.evaluation.report`) both use
this module, which imports neither.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from ..constants import FINDING_IDS, LABELS
from ..metrics import finite_or_none, label_scores


def metric_table(probabilities: np.ndarray, targets: np.ndarray, warn: bool = True) -> np.ndarray:
    """``(2, 15)``: per-label ROC-AUC (row 0) and AUPRC (row 1) from :func:`cxr_vit.metrics.label_scores`."""
    scores = label_scores(probabilities, targets, warn)
    return np.stack([scores.auc, scores.auprc])


def macro_auc(auc: np.ndarray, findings: Sequence[int] = FINDING_IDS) -> np.ndarray:
    """Mean AUC over ``findings`` along the last axis; NaN where any of them is NaN."""
    return np.asarray(auc)[..., findings].mean(axis=-1)


def weighted_auc_ap(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision of one label under each row of ``weights`` (``(resamples, n)``) at once.

    The same numbers as sklearn's ``roc_auc_score`` / ``average_precision_score`` with ``sample_weight``
    (ties count half for AUC; AP steps at each distinct score), which the tests check. It exists for speed:
    sklearn takes one call per resample, label and metric (30,000 calls, ~1-3 ms each, for 1,000 resamples),
    while the sort order and the tie blocks of the scores are the same in every resample, so here one sort
    serves all of them and the rest is cumulative sums. NaN where a resample has only one class.
    """
    order = np.argsort(-scores, kind="stable")  # descending, as the thresholds of a PR curve
    sorted_scores, positive = scores[order], targets[order].astype(bool)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # one block per distinct score
    weights = weights[:, order]
    pos = np.add.reduceat(np.where(positive, weights, 0.0), starts, axis=1)  # (resamples, blocks)
    neg = np.add.reduceat(np.where(positive, 0.0, weights), starts, axis=1)
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # AUC: each positive beats the negatives scored below it (later blocks) and ties with half of its block.
        neg_below = total_neg[:, None] - np.cumsum(neg, axis=1)
        auc = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)
        # AP: sum over thresholds of (recall step) x (precision at that threshold).
        true_pos, called = np.cumsum(pos, axis=1), np.cumsum(pos + neg, axis=1)
        precision = np.where(called > 0, true_pos / np.where(called > 0, called, 1.0), 0.0)
        ap = (pos * precision).sum(axis=1) / total_pos
    defined = (total_pos > 0) & (total_neg > 0)
    return np.where(defined, auc, np.nan), np.where(defined, ap, np.nan)


def patient_resamples(
    num_patients: int, n_bootstrap: int, seed: int, chunk_size: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """Per chunk of resamples: its rows and how often each patient was drawn, ``(rows, num_patients)``.

    A resample draws as many patients as there are, with replacement; chunks bound the draw matrix's memory.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, n_bootstrap, chunk_size):
        size = min(chunk_size, n_bootstrap - start)
        draws = rng.integers(0, num_patients, size=(size, num_patients))
        counts = np.zeros((size, num_patients))
        np.add.at(counts, (np.arange(size)[:, None], draws), 1.0)
        yield slice(start, start + size), counts


def bootstrap_distribution(
    probabilities: np.ndarray,
    targets: np.ndarray,
    groups: Sequence,
    n_bootstrap: int = 1000,
    seed: int = 0,
    chunk_size: int = 200,
) -> np.ndarray:
    """``(n_bootstrap, 2, 15)`` per-label AUC and AUPRC of patient-level resamples (NaN: one class, or none known).

    Each image of a resample (:func:`patient_resamples`) is weighted by how often its patient was drawn, which
    equals pooling copies of the drawn patients' images; a label's missing (NaN) targets are left out.
    """
    targets = np.asarray(targets, dtype=np.float64)
    known = np.isfinite(targets)
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    tables = np.full((n_bootstrap, 2, len(LABELS)), np.nan)
    for rows, counts in patient_resamples(int(group_index.max()) + 1, n_bootstrap, seed, chunk_size):
        weights = counts[:, group_index]
        for label in range(len(LABELS)):
            rows_known = known[:, label]
            if not rows_known.any():
                continue
            auc, ap = weighted_auc_ap(
                probabilities[rows_known, label], targets[rows_known, label], weights[:, rows_known]
            )
            tables[rows, 0, label], tables[rows, 1, label] = auc, ap
    return tables


def interval(point: float, samples: np.ndarray, confidence: float = 0.95) -> dict[str, float | int | None]:
    """Point estimate with a percentile interval of the finite ``samples`` and how many there were."""
    used = samples[np.isfinite(samples)]
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(used, [tail, 100.0 - tail]) if used.size else (math.nan, math.nan)
    return {
        "value": finite_or_none(point),
        "ci_low": finite_or_none(low),
        "ci_high": finite_or_none(high),
        "n_resamples": int(used.size),
    }


def bootstrap_report(
    probabilities: np.ndarray,
    targets: np.ndarray,
    groups: Sequence,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    warn: bool = True,
) -> dict:
    """Per-label AUC/AUPRC intervals and the 14-finding macro AUC interval, from patient resamples.

    The macro AUC averages the findings with an AUC on the whole split (``macro_findings``: a set from another
    source averages only the findings it annotates); a resample counts towards its interval only if each of those
    findings has both classes in it, so every resample averages the same labels. A label without an AUC has
    ``reason`` (``"not annotated"`` or ``"one class only"``, :class:`cxr_vit.metrics.LabelScores`).
    """
    scores = label_scores(probabilities, targets, warn)
    point = np.stack([scores.auc, scores.auprc])
    samples = bootstrap_distribution(probabilities, targets, groups, n_bootstrap, seed)
    findings = np.array([i for i in FINDING_IDS if np.isfinite(point[0, i])], dtype=int)
    labels = {
        label: {
            "auc": interval(point[0, i], samples[:, 0, i], confidence),
            "auprc": interval(point[1, i], samples[:, 1, i], confidence),
            "known": int(scores.known[i]),
            "reason": scores.reason(label),
        }
        for i, label in enumerate(LABELS)
    }
    macro_point = macro_auc(point[0], findings) if findings.size else math.nan
    macro_samples = macro_auc(samples[:, 0], findings) if findings.size else np.full(n_bootstrap, math.nan)
    return {
        "auc_macro": interval(macro_point, macro_samples, confidence),
        "macro_findings": [LABELS[i] for i in findings],
        "labels": labels,
    }
