"""External validation: a model scored on films from another source, beside its own internal figures.

A model trained on NIH loses AUC at other hospitals, and what it loses differs per finding; reporting checklists ask
for the comparison. This module scores a prepared set of any source (its ``source`` column names it; a set without
one is NIH) and builds:

* :func:`score_labels`: per-label AUC/AUPRC with patient-bootstrap intervals over the rows where each label is known,
  prevalence, and sensitivity/specificity/PPV/F1 at given thresholds; a label the set does not annotate has
  ``auc: null`` and ``reason: "not annotated"``. ``evaluate.py`` and ``external_validation.py`` both use it.
* :func:`external_setting`: whether the evaluated set is external (a source the model was not trained on, from
  the model's config, :data:`SOURCES_KEY`) and, when it is or when every image is scored (``--split all``), the
  thresholds stored with the model, chosen on its training source's validation split: the operating points a user
  deploys with. The evaluated set's own validation split is never used to choose them there.
* :func:`external_section` / :func:`external_markdown`: the report's "External validation" section, the model's
  internal test AUC (its own report, ``<model>/evaluation/report.json``) beside the external AUC per shared
  label, their difference with a 95% interval, the prevalence in both, and sensitivity/specificity in both.
* :mod:`.external_table`: ``scripts/external_validation.py``'s model x dataset table.

The difference's interval: internal and external sets are independent samples of patients, so each AUC's standard
error is read off its percentile interval (width / 2z) and the two are combined, ``d +- z sqrt(se_i^2 + se_e^2)``
(the internal report keeps its interval, not its resamples).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm

from ..constants import (
    DEFAULT_SOURCE,
    FINDINGS,
    LABELS,
    SOURCE_COLUMN,
    SOURCES_KEY,
    THRESHOLDS_INFO_KEY,
    THRESHOLDS_KEY,
)
from ..markdown import format_ci, number, table
from ..metrics import NOT_ANNOTATED, finite_or_none
from .bootstrap import bootstrap_report
from .thresholds import THRESHOLDS_FILE, operating_points

logger = logging.getLogger(__name__)


class ExternalValidationError(ValueError):
    """What an external evaluation needs is missing (e.g. thresholds stored with the model)."""


# ---- scoring -----------------------------------------------------------------------------------------


def score_labels(
    probabilities: np.ndarray,
    targets: np.ndarray,
    patients: Sequence,
    thresholds: dict[str, float],
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """``{"auc_macro", "macro_findings", "labels"}``: :func:`.bootstrap.bootstrap_report` with, per label, the known
    rows, positives, prevalence, the threshold and the operating point there (all over the known rows)."""
    boot = bootstrap_report(probabilities, targets, patients, n_bootstrap, seed, confidence)
    points = operating_points(probabilities, targets, thresholds)
    labels = {}
    for index, label in enumerate(LABELS):
        entry = boot["labels"][label]
        positives = int((targets[:, index] == 1).sum())
        labels[label] = {
            "positives": positives,
            "known": entry["known"],
            "prevalence": positives / entry["known"] if entry["known"] else None,
            "auc": entry["auc"],
            "auprc": entry["auprc"],
            "reason": entry["reason"],
            "threshold": thresholds[label],
            **{name: finite_or_none(value) for name, value in points[label].items()},
        }
    return {"auc_macro": boot["auc_macro"], "macro_findings": boot["macro_findings"], "labels": labels}


def annotated_labels(labels: dict) -> list[str]:
    """The labels a scored set annotates (some row knows them), in canonical order."""
    return [label for label in LABELS if labels[label]["reason"] != NOT_ANNOTATED]


# ---- which set, which thresholds ---------------------------------------------------------------------


def dataset_sources(dataset) -> list[str]:
    """The sources of a prepared split's images (its ``source`` column), or ``["nih"]`` for a set without one."""
    if SOURCE_COLUMN not in dataset.column_names:
        return [DEFAULT_SOURCE]
    return sorted({str(value) for value in dataset[SOURCE_COLUMN]})


def training_sources(config) -> list[str]:
    """The sources a model was trained on (its config's :data:`SOURCES_KEY`; NIH for a model without the key)."""
    return list(getattr(config, SOURCES_KEY, None) or [DEFAULT_SOURCE])


@dataclass
class ExternalSetting:
    """How a set is scored: its sources, the model's, and the stored thresholds when they are used."""

    sources: list[str]
    training_sources: list[str]
    thresholds: dict[str, float] | None = None
    thresholds_rule: str | None = None

    @property
    def external(self) -> bool:
        return not set(self.sources) <= set(self.training_sources)


def stored_thresholds(model_name: str | os.PathLike, config) -> tuple[dict[str, float], str]:
    """(thresholds, how they were chosen) stored with a model: its config.json (``evaluate.py --save_thresholds``),
    else the ``thresholds.json`` of its own evaluation (``<model>/evaluation/``); an error saying how to make them."""
    stored, info = getattr(config, THRESHOLDS_KEY, None), getattr(config, THRESHOLDS_INFO_KEY, None) or {}
    where = "config.json"
    path = Path(model_name) / "evaluation" / THRESHOLDS_FILE
    if stored is None and path.is_file():
        content = json.loads(path.read_text())
        stored, info, where = content.get("thresholds"), content, f"evaluation/{THRESHOLDS_FILE}"
        if content.get("tta", 1) != 1 or len(content.get("models") or [None]) != 1:
            raise ExternalValidationError(
                f"{model_name}/{where} was chosen on averaged probabilities (test-time views or an ensemble), not on "
                "this model's own: store the model's thresholds with scripts/evaluate.py --save_thresholds"
            )
    if not isinstance(stored, dict) or set(stored) != set(LABELS):
        raise ExternalValidationError(
            f"{model_name} has no stored thresholds (config.json {THRESHOLDS_KEY} or evaluation/{THRESHOLDS_FILE}): "
            "sensitivity and specificity on another source are measured at the thresholds chosen on the training "
            f"source's validation split. Run scripts/evaluate.py --model {model_name} --dataset_name <its training "
            f"set> --output_dir {model_name}/evaluation first (or add --save_thresholds)."
        )
    chosen_on = ", ".join(f"{key} {info[key]}" for key in ("dataset", "split") if info.get(key))
    rule = f"stored with the model ({where}): {info.get('rule', 'per-label thresholds')}"
    return {label: float(stored[label]) for label in LABELS}, rule + (f"; chosen on {chosen_on}" if chosen_on else "")


def external_setting(model_name: str | os.PathLike, config, evaluated, split: str, all_splits: str) -> ExternalSetting:
    """The :class:`ExternalSetting` of scoring ``evaluated`` (split ``split``): stored thresholds when the set is
    external or ``split`` is ``all_splits`` (its validation images are being scored too)."""
    setting = ExternalSetting(dataset_sources(evaluated), training_sources(config))
    if setting.external or split == all_splits:
        setting.thresholds, setting.thresholds_rule = stored_thresholds(model_name, config)
    return setting


# ---- the report section ------------------------------------------------------------------------------


INTERNAL_REPORT = Path("evaluation") / "report.json"  # where evaluate.py --output_dir <model>/evaluation writes


def internal_report(
    model_name: str | os.PathLike, trained_on: Sequence[str], fingerprint: str
) -> tuple[dict | None, str]:
    """(the model's own report, where it is) when ``<model>/evaluation/report.json`` describes these weights
    (``fingerprint``, the evaluated model's) on a training source; else (None, why not)."""
    path = Path(model_name) / INTERNAL_REPORT
    if not Path(model_name).is_dir():
        return None, "the model is not a local folder, so its own report was not read"
    if not path.is_file():
        return None, f"no {INTERNAL_REPORT} in the model folder (run scripts/evaluate.py on its training source " \
            "with --output_dir <model>/evaluation)"  # fmt: skip
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"{INTERNAL_REPORT} of the model folder cannot be read ({err})"
    if not isinstance(report, dict) or report.get("model_fingerprint") != fingerprint:
        return None, f"{INTERNAL_REPORT} of the model folder describes other weights (evaluate the model again)"
    sources = report.get("sources") or [DEFAULT_SOURCE]
    if not set(sources) <= set(trained_on):
        return None, f"{INTERNAL_REPORT} of the model folder scores another source ({', '.join(sources)})"
    return report, f"{INTERNAL_REPORT} (split {report.get('split', '?')} of {report.get('dataset', '?')})"


def _difference(internal: dict, external: dict, confidence: float) -> dict:
    """external - internal AUC with a normal-approximation interval from the two independent percentile intervals."""
    if internal.get("value") is None or external.get("value") is None:
        return {"value": None, "ci_low": None, "ci_high": None}
    value = external["value"] - internal["value"]
    z = norm.ppf(0.5 + confidence / 2)
    widths = [entry["ci_high"] - entry["ci_low"] for entry in (internal, external) if entry.get("ci_low") is not None]
    if len(widths) < 2:
        return {"value": value, "ci_low": None, "ci_high": None}
    half = z * math.sqrt(sum((width / (2 * z)) ** 2 for width in widths))
    return {"value": value, "ci_low": value - half, "ci_high": value + half}


def _prevalence(entry: dict, num_images: int) -> float | None:
    if entry.get("prevalence") is not None:
        return entry["prevalence"]
    return entry["positives"] / num_images if num_images else None  # a report from before missing labels


def external_section(report: dict, setting: ExternalSetting, internal: dict | None, internal_note: str) -> dict:
    """The report's ``external_validation``: per label the set annotates, the internal and external AUC, their
    difference, prevalence and operating points in both; the internal side empty (with why) without its report."""
    confidence = report["bootstrap"]["confidence"]
    rows = {}
    for label in annotated_labels(report["labels"]):
        ext = report["labels"][label]
        inside = (internal or {}).get("labels", {}).get(label) or {}
        rows[label] = {
            "internal_auc": inside.get("auc"),
            "external_auc": ext["auc"],
            "difference": _difference(inside.get("auc") or {}, ext["auc"], confidence),
            "internal_prevalence": _prevalence(inside, internal["num_images"]) if inside else None,
            "external_prevalence": ext["prevalence"],
            "threshold": ext["threshold"],
            "internal_sensitivity": inside.get("sensitivity"),
            "internal_specificity": inside.get("specificity"),
            "external_sensitivity": ext["sensitivity"],
            "external_specificity": ext["specificity"],
        }
    shared = [label for label in FINDINGS if label in rows and rows[label]["internal_auc"] is not None]
    shared = [label for label in shared if rows[label]["internal_auc"].get("value") is not None]
    shared = [label for label in shared if rows[label]["external_auc"].get("value") is not None]

    def mean(side: str) -> float | None:
        return float(np.mean([rows[label][side]["value"] for label in shared])) if shared else None

    return {
        "sources": setting.sources,
        "training_sources": setting.training_sources,
        "internal_report": internal_note,
        "internal_split": (internal or {}).get("split"),
        "thresholds_rule": report["threshold_rule"],
        "labels": rows,
        "not_annotated": [label for label in LABELS if label not in rows],
        "shared_findings": shared,
        "macro_shared": {"internal": mean("internal_auc"), "external": mean("external_auc")},
        "difference_rule": "external - internal AUC; interval: normal approximation from the two independent "
        "percentile intervals (se = width / 2z each, combined in quadrature)",
    }


def external_markdown(section: dict) -> list[str]:
    """The "External validation" section of report.md."""
    lines = [
        "## External validation",
        "",
        f"Evaluated source: {', '.join(section['sources'])}; the model was trained on "
        f"{', '.join(section['training_sources'])}. Internal figures: {section['internal_report']}.",
        "",
        f"Thresholds: {section['thresholds_rule']}. Sensitivity and specificity below are at those thresholds, "
        "the shift a user meets when deploying the model here.",
        "",
    ]
    internal_split = section.get("internal_split") or "internal"
    headers = [f"Label ({internal_split} -> external)", "Internal AUC", "External AUC", "Difference [95% CI]"]
    headers += ["Prevalence", "Sens", "Spec"]
    rows = []
    for label, row in section["labels"].items():
        difference = row["difference"]
        rows.append(
            [
                label,
                format_ci(row["internal_auc"]) if row["internal_auc"] else "n/a",
                format_ci(row["external_auc"]),
                format_ci({**difference, "note": "n/a"}).replace("[n/a]", "").strip(),
                f"{number(row['internal_prevalence'])} -> {number(row['external_prevalence'])}",
                f"{number(row['internal_sensitivity'])} -> {number(row['external_sensitivity'])}",
                f"{number(row['internal_specificity'])} -> {number(row['external_specificity'])}",
            ]
        )
    lines += [table(headers, rows, aligned=True), ""]
    macro = section["macro_shared"]
    if section["shared_findings"]:
        lines += [
            f"Mean AUC over the {len(section['shared_findings'])} findings scored on both sides: internal "
            f"{macro['internal']:.3f}, external {macro['external']:.3f} "
            f"({macro['external'] - macro['internal']:+.3f}).",
            "",
        ]
    if section["not_annotated"]:
        lines += [f"Not annotated by this set, so not scored: {', '.join(section['not_annotated'])}.", ""]
    lines += [f"Difference: {section['difference_rule']}.", ""]
    return lines
