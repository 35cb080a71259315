"""Encoders compared on the same test images: macro AUC with patient-bootstrap CIs, trainable parameters,
training images/s, and a paired-bootstrap p-value for each pair.

Paired: both models are scored on the *same* patient resamples (:func:`cxr_vit.evaluation.bootstrap_distribution`
with one seed draws identical resamples for both), so the spread of their difference excludes the variation
the two share, the test set's. The two-sided p-value of "no difference in 14-finding macro AUC" is twice the
share of resampled differences on the far side of 0 (counted with the usual +1, so it is never 0, and capped at
1): it agrees with the percentile interval, which excludes 0 exactly when p < 0.05.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .constants import FINDING_IDS
from .evaluation import bootstrap_distribution, bootstrap_report, macro_auc, metric_table
from .markdown import format_ci, number, table


@dataclass
class EncoderResult:
    """One trained encoder: its test probabilities and what the table states about its training."""

    name: str
    probabilities: np.ndarray
    finetune: str | None = None
    trainable_parameters: int | None = None
    images_per_second: float | None = None


def paired_bootstrap(
    probabilities_a: np.ndarray,
    probabilities_b: np.ndarray,
    targets: np.ndarray,
    groups: Sequence,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Difference in 14-finding macro AUC (a - b) with its 95% interval and two-sided p-value over shared patient
    resamples; the findings averaged are those with both classes in the whole split, in every resample used."""
    point_a = metric_table(probabilities_a, targets, warn=False)[0]
    point_b = metric_table(probabilities_b, targets, warn=False)[0]
    findings = np.array([i for i in FINDING_IDS if np.isfinite(point_a[i])], dtype=int)
    difference = float(macro_auc(point_a, findings) - macro_auc(point_b, findings))
    samples_a = bootstrap_distribution(probabilities_a, targets, groups, n_bootstrap, seed)[:, 0]
    samples_b = bootstrap_distribution(probabilities_b, targets, groups, n_bootstrap, seed)[:, 0]
    resampled = macro_auc(samples_a, findings) - macro_auc(samples_b, findings)
    resampled = resampled[np.isfinite(resampled)]
    far_side = min(int(np.sum(resampled <= 0)), int(np.sum(resampled >= 0)))
    low, high = np.percentile(resampled, [2.5, 97.5]) if resampled.size else (math.nan, math.nan)
    return {
        "difference": difference,
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": min(1.0, 2 * (far_side + 1) / (resampled.size + 1)),
        "n_resamples": int(resampled.size),
    }


def compare(
    results: Sequence[EncoderResult], targets: np.ndarray, groups: Sequence, n_bootstrap: int = 1000, seed: int = 0
) -> dict:
    """``{"encoders": [...], "pairs": [...]}``: each encoder's macro AUC interval and training figures, and the
    paired test of every pair (in the order given)."""
    encoders = []
    for result in results:
        report = bootstrap_report(result.probabilities, targets, groups, n_bootstrap, seed, warn=False)
        encoders.append(
            {
                "name": result.name,
                "auc_macro": report["auc_macro"],
                "finetune": result.finetune,
                "trainable_parameters": result.trainable_parameters,
                "images_per_second": result.images_per_second,
            }
        )
    pairs = [
        {
            "a": a.name,
            "b": b.name,
            **paired_bootstrap(a.probabilities, b.probabilities, targets, groups, n_bootstrap, seed),
        }  # fmt: skip
        for a, b in itertools.combinations(results, 2)
    ]
    return {
        "num_images": len(targets),
        "num_patients": len(np.unique(np.asarray(groups))),
        "bootstrap": {"unit": "patient", "n_resamples": n_bootstrap, "seed": seed, "paired": True},
        "encoders": encoders,
        "pairs": pairs,
    }


def comparison_markdown(comparison: dict) -> str:
    """The table and the pairwise tests as Markdown."""
    rows = [
        [
            entry["name"],
            entry["finetune"] or "?",
            format_ci(entry["auc_macro"]),
            f"{entry['trainable_parameters']:,}" if entry["trainable_parameters"] is not None else "n/a",
            number(entry["images_per_second"], 1),
        ]
        for entry in comparison["encoders"]
    ]
    pairs = [
        [
            f"{pair['a']} - {pair['b']}",
            f"{pair['difference']:+.4f} [{pair['ci_low']:+.4f}, {pair['ci_high']:+.4f}]",
            f"{pair['p_value']:.4f}",
        ]  # fmt: skip
        for pair in comparison["pairs"]
    ]
    boot = comparison["bootstrap"]
    return (
        "\n\n".join(
            [
                f"# Encoder comparison\n\nTest split: {comparison['num_images']} images, {comparison['num_patients']} "
                f"patients; {boot['n_resamples']} patient resamples (seed {boot['seed']}), the same for every model.",
                table(["encoder", "finetune", "macro AUC [95% CI]", "trainable parameters", "train images/s"], rows),
                "Macro AUC: the 14 findings, 95% CI from the patient resamples. Train images/s: the training "
                "steps' steady rate (n/a: too few steps to time), for `linear` rows of cached features (the "
                "backbone is not run).",
                "Paired bootstrap on the same test images (difference in 14-finding macro AUC, 95% CI, two-sided p):",
                table(["pair", "difference [95% CI]", "p"], pairs),
            ]
        )
        + "\n"
    )
