"""The model x dataset table of ``scripts/external_validation.py``: each model on every image of each prepared set,
the macro AUC over the findings that set annotates with patient-bootstrap intervals, and the per-label detail
(:func:`.external.score_labels` at each model's stored thresholds); JSON, Markdown and a forest plot.

Apart from :mod:`.external` because it loads data and models (:mod:`cxr_vit.data`, :mod:`cxr_vit.prediction`),
which the report modules must not import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..constants import FINDINGS, LABELS
from ..data import DEFAULT_SPLIT_SEED, load_chestxray14, select_splits
from ..data.schemas import ALL_SPLITS
from ..inference import Classifier
from ..markdown import format_ci, number, table
from ..metrics import NOT_ANNOTATED
from ..prediction import load_model
from ..public_names import model_reference
from .external import dataset_sources, score_labels, stored_thresholds


def validation_table(
    models: Sequence[str],
    datasets: Sequence[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    batch_size: int = 64,
    device: str | None = None,
    num_workers: int = 0,
    precision: str = "auto",
    split_seed: int | None = None,
) -> dict:
    """Every model on every image of every dataset (:func:`score_labels` at each model's stored thresholds):
    ``{"models", "datasets", "bootstrap", "cells": [{model, dataset, sources, num_images, num_patients,
    auc_macro, macro_findings, labels}, ...]}``, models and datasets named by folder name or Hub id. Bad input
    raises before any inference: a dataset that does not load, a model without stored thresholds
    (:class:`ExternalValidationError`)."""
    loaded = {name: load_model(name) for name in models}
    thresholds = {name: stored_thresholds(name, model.config)[0] for name, model in loaded.items()}
    seed_of_splits = DEFAULT_SPLIT_SEED if split_seed is None else split_seed
    sets = {}
    for name in datasets:
        dataset = load_chestxray14(name, None, seed_of_splits)
        (images,) = select_splits(dataset, [ALL_SPLITS], name, columns=["patient_id"])
        sets[name] = (images, model_reference(name))  # a folder's name or the Hub id, never a local path
    cells = []
    for model_name, model in loaded.items():
        classifier = Classifier(model, device=device, precision=precision)
        for images, public_name in sets.values():
            probabilities, targets = classifier.predict_dataset(images, batch_size, num_workers, public_name)
            patients = np.asarray(images["patient_id"])
            scored = score_labels(probabilities, targets, patients, thresholds[model_name], n_bootstrap, seed,
                                  confidence)  # fmt: skip
            cells.append(
                {
                    "model": model_reference(model_name),
                    "dataset": public_name,
                    "sources": dataset_sources(images),
                    "num_images": len(images),
                    "num_patients": len(np.unique(patients)),
                    **scored,
                }
            )
    return {
        "models": [model_reference(name) for name in models],
        "datasets": [public_name for _, public_name in sets.values()],
        "bootstrap": {"unit": "patient", "n_resamples": n_bootstrap, "seed": seed, "confidence": confidence},
        "cells": cells,
    }


def table_markdown(result: dict) -> str:
    """``external_validation.md``: the model x dataset table of macro AUCs, then per dataset the per-label AUCs."""
    models, datasets = result["models"], result["datasets"]
    cells = {(cell["model"], cell["dataset"]): cell for cell in result["cells"]}
    confidence = f"{result['bootstrap']['confidence']:.0%}"

    def macro(cell: dict) -> str:
        return f"{format_ci(cell['auc_macro'])} ({len(cell['macro_findings'])}/{len(FINDINGS)})"

    lines = [
        "# External validation",
        "",
        f"Macro ROC-AUC over the findings each dataset annotates ({confidence} CI, patient bootstrap, "
        f"{result['bootstrap']['n_resamples']} resamples; (k/{len(FINDINGS)}): findings averaged). Every image of "
        "each dataset is scored; thresholds are those stored with each model.",
        "",
        table(["Model", *datasets], [[model, *(macro(cells[model, name]) for name in datasets)] for model in models]),
        "",
    ]
    for name in datasets:
        first = cells[models[0], name]
        lines += [
            f"## {name}",
            "",
            f"Sources: {', '.join(first['sources'])}; {first['num_images']} images of {first['num_patients']} "
            "patients.",
            "",
        ]
        rows = []
        for label in LABELS:
            entries = [cells[model, name]["labels"][label] for model in models]
            if entries[0]["reason"] == NOT_ANNOTATED:
                rows.append([label, "not annotated", *(["n/a"] * len(models))])
                continue
            prevalence = f"{entries[0]['positives']}/{entries[0]['known']} ({number(entries[0]['prevalence'])})"
            rows.append([label, prevalence, *(format_ci(entry["auc"]) for entry in entries)])
        lines += [table(["Label", "Positives / known", *models], rows), ""]
    return "\n".join(lines)


def plot_table(result: dict, path: str | os.PathLike) -> None:
    """One panel per dataset: each model's macro AUC with its interval (a forest plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, datasets = result["models"], result["datasets"]
    cells = {(cell["model"], cell["dataset"]): cell for cell in result["cells"]}
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 0.5 * len(models) + 1.8), squeeze=False)
    for axis, name in zip(axes[0], datasets, strict=True):
        for row, model in enumerate(models):
            macro = cells[model, name]["auc_macro"]
            y = len(models) - 1 - row
            if macro["value"] is None:
                axis.text(0.52, y, "n/a", va="center", fontsize=8, color="grey")
                continue
            low = macro["ci_low"] if macro["ci_low"] is not None else macro["value"]
            high = macro["ci_high"] if macro["ci_high"] is not None else macro["value"]
            errors = [[max(macro["value"] - low, 0.0)], [max(high - macro["value"], 0.0)]]
            axis.errorbar(macro["value"], y, xerr=errors, fmt="o", color="tab:blue", capsize=3)
        count = len(cells[models[0], name]["macro_findings"])
        axis.axvline(0.5, color="grey", linewidth=0.8)
        axis.set_xlim(0.4, 1.0)
        axis.set_ylim(-0.7, len(models) - 0.3)
        axis.set_yticks(range(len(models)))
        axis.set_yticklabels(models[::-1] if axis is axes[0][0] else [])
        axis.set_title(f"{name}\n({count}/{len(FINDINGS)} findings)", fontsize=9)
        axis.set_xlabel("macro ROC-AUC")
    figure.suptitle(f"External validation ({result['bootstrap']['confidence']:.0%} CI, patient bootstrap)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
