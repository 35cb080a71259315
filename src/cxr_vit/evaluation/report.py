"""The evaluation report: discrimination with patient-bootstrap CIs, validation-chosen thresholds, curves, and the
sections reporting standards ask for.

:func:`evaluate_model` predicts the validation and the evaluated split through the one inference path, chooses
thresholds on validation (:mod:`.thresholds`), and reports on the evaluated split: per-label AUC/AUPRC with
patient-bootstrap intervals (:mod:`.bootstrap`), subgroups by sex, age band and view position (:mod:`.subgroups`;
"not available" when the split has no such columns), calibration (:mod:`.calibration`; before and after for a
temperature-scaled model, whose config records T and b) and, given the official box list, localization of an
explainer's heatmaps (:mod:`.localization`, :mod:`.explainers`). The report's Method section lists the
reporting-checklist topics (CLAIM 2024, TRIPOD+AI) that the run actually covered.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from ..constants import FINDINGS, LABELS, NO_FINDING, THRESHOLDS_KEY
from ..inference import EXPORTED_MODELS, Classifier, Ensemble
from ..markdown import format_ci, number, table
from ..metrics import NOT_ANNOTATED
from ..modeling import timm_state_dict
from . import calibration
from .external import annotated_labels, dataset_sources, external_markdown, score_labels
from .localization import localization_markdown as localization_table
from .localization import localization_section
from .subgroups import plot_subgroup_forest, subgroup_markdown, subgroup_report
from .thresholds import THRESHOLD_RULE, THRESHOLDS_FILE, choose_thresholds

# ---- the whole evaluation ----------------------------------------------------------------------------


SUBGROUP_COLUMNS = ("sex", "age", "view_position")


@dataclass
class Evaluation:
    report: dict
    probabilities: np.ndarray
    targets: np.ndarray
    thresholds: dict[str, float]
    # A temperature-scaled model's probabilities before its scaling (recovered from T and b), else None.
    uncalibrated: np.ndarray | None = None


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the timm-named tensors (names, dtypes, shapes, bytes): which weights a report describes.

    The same for a loaded model (``timm_state_dict(model.state_dict())``) and for its ``model.safetensors``
    (``safetensors.torch.load_file``), so a model card can check that a report belongs to the weights beside it.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model) -> str:
    """The weights' fingerprint; an export's is its file's (``onnx:<sha256>``, ``pt2:<sha256>``), which no weights
    folder has."""
    if isinstance(model, EXPORTED_MODELS):
        return model.fingerprint
    return weights_fingerprint(timm_state_dict(model.state_dict()))


def evaluate_model(
    model,
    evaluated,
    validation=None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    batch_size: int = 64,
    device: str | None = None,
    num_workers: int = 0,
    precision: str = "auto",
    boxes=None,
    explainer: str | None = None,
    bbox_csv: str = "?",
    tta: int = 1,
    ensemble: Sequence = (),
    thresholds: dict[str, float] | None = None,
    thresholds_rule: str | None = None,
) -> Evaluation:
    """Predict both splits (:class:`cxr_vit.inference.Classifier`), choose thresholds on ``validation``, report on
    ``evaluated``: discrimination, subgroups, calibration and, with ``boxes`` (:func:`cxr_vit.evaluation.localization.
    read_bbox_csv` of the file ``bbox_csv``), the localization of ``explainer``'s heatmaps
    (:func:`cxr_vit.evaluation.explainers.resolve_explainer`).

    ``thresholds`` (with ``thresholds_rule``, how they were chosen) instead of ``validation``: use these, e.g. the
    ones stored with the model, for a set from another source or for every image of a set
    (:func:`.external.external_setting`). Labels the evaluated set does not annotate (NaN) have no AUC and the
    reason (:func:`.external.score_labels`); the macro averages the findings it annotates (``macro_findings``).

    ``tta``: fixed views averaged per image; ``ensemble``: more models whose probabilities are averaged with
    ``model``'s (:class:`cxr_vit.inference.Ensemble`). Heatmaps and the calibration's before/after are
    ``model``'s own; the report records what was averaged.
    """
    if (validation is None) == (thresholds is None):
        raise ValueError("give either a validation split to choose thresholds on or the thresholds to use")
    classifier = Classifier(model, device=device, precision=precision, tta=tta)
    members = [classifier, *(Classifier(other, device=device, precision=precision, tta=tta) for other in ensemble)]
    predictor = Ensemble(members) if len(members) > 1 else classifier
    num_validation = None
    if thresholds is None:
        val_probabilities, val_targets = predictor.predict_dataset(validation, batch_size, num_workers, "validation")
        thresholds, num_validation = choose_thresholds(val_probabilities, val_targets), len(val_targets)
    probabilities, targets = predictor.predict_dataset(evaluated, batch_size, num_workers, "evaluate")
    patients = np.asarray(evaluated["patient_id"])
    scored = score_labels(probabilities, targets, patients, thresholds, n_bootstrap, seed, confidence)
    labels = scored["labels"]
    report = {
        "num_images": len(targets),
        "num_patients": len(np.unique(patients)),
        "num_validation_images": num_validation,
        "sources": dataset_sources(evaluated),
        "auc_macro": scored["auc_macro"],
        "macro_findings": scored["macro_findings"],
        "annotated_labels": annotated_labels(labels),
        "no_finding": {"label": NO_FINDING, **labels[NO_FINDING]},
        "labels": labels,
        "thresholds": thresholds,
        "threshold_rule": thresholds_rule or THRESHOLD_RULE,
        "precision": classifier.runtime,
        "bootstrap": {"unit": "patient", "n_resamples": n_bootstrap, "seed": seed, "confidence": confidence},
        "model_fingerprint": model_fingerprint(model),
        "finetune": getattr(model.config, "cxr_vit_finetune", None),  # --finetune mode and trainable parameters
        "averaged": {
            "tta_views": tta,
            "models": len(members),
            "rule": "mean of the probabilities"
            + (f" over {tta} fixed views per image (centre crop, then corner crops)" if tta > 1 else "")
            + (f" of {len(members)} models" if len(members) > 1 else ""),
        },
    }
    options = {"n_bootstrap": n_bootstrap, "seed": seed, "confidence": confidence}
    report["subgroups"] = subgroup_section(evaluated, patients, probabilities, targets, thresholds, **options)
    report["calibration"], uncalibrated = calibration_section(
        classifier, evaluated, probabilities, targets, batch_size, num_workers, single_model=len(members) == 1
    )
    if boxes is not None:
        report["localization"] = localization_section(classifier, evaluated, boxes, explainer, batch_size, bbox_csv)
    report["checklist"] = reporting_checklist(report)
    return Evaluation(report, probabilities, targets, thresholds, uncalibrated)


def subgroup_section(
    evaluated, patients: np.ndarray, probabilities: np.ndarray, targets: np.ndarray, thresholds: dict, **options
) -> dict:
    """:func:`.subgroups.subgroup_report` on the metadata columns the split has, or why there is none."""
    present = [column for column in SUBGROUP_COLUMNS if column in evaluated.column_names]
    missing = [column for column in SUBGROUP_COLUMNS if column not in present]
    if not present:
        return {
            "available": False,
            "reason": f"the evaluated split has none of the columns {', '.join(SUBGROUP_COLUMNS)} (datasets from "
            "other publishers may not carry the NIH metadata)",
        }
    columns = {column: list(evaluated[column]) for column in present}
    report = subgroup_report(probabilities, targets, thresholds, patients, **columns, **options)
    return {"available": True, "missing_columns": missing, **report}


def calibration_section(
    classifier, evaluated, probabilities, targets, batch_size: int, num_workers: int, single_model: bool = True
):
    """(per-label ECE, Brier and reliability bins of the model's probabilities, and for a temperature-scaled model also
    of its probabilities before the scaling; those probabilities or None).

    A model made by ``scripts/calibrate.py`` records T and b, so the original head comes back exactly (``W T``,
    ``(b' - b) T``: :func:`.calibration.uncalibrated_model`) and predicts the evaluated split through the same
    inference path. Inverting its float32 probabilities instead would fail where the calibrated ones saturate.
    """
    section = {"model": calibration.calibration_report(probabilities, targets), "uncalibrated": None, "scaling": None}
    record = getattr(classifier.model.config, calibration.CALIBRATION_KEY, None)
    # an ensemble's average has no single "before"; an exported graph has no head to un-scale
    if not record or not single_model or classifier.exported:
        return section, None
    original = calibration.uncalibrated_model(classifier.model)
    before = Classifier(original, device=classifier.device, precision=classifier.precision, tta=classifier.tta)
    uncalibrated, _ = before.predict_dataset(evaluated, batch_size, num_workers, "uncalibrated")
    section["uncalibrated"] = calibration.calibration_report(uncalibrated, targets)
    section["scaling"] = record
    return section, uncalibrated


# Reporting-checklist topics (not item numbers) that a run can cover, and the report section that covers them.
CLAIM_2024 = "CLAIM 2024 (Tejani et al., Radiol Artif Intell 2024)"
TRIPOD_AI = "TRIPOD+AI (Collins et al., BMJ 2024)"


def reporting_checklist(report: dict) -> list[dict[str, str]]:
    """The checklist topics this run computed: always discrimination with CIs, thresholds and calibration;
    subgroups only when the split had the metadata; localization only when boxes were scored."""
    items = [
        (CLAIM_2024, "performance metrics with measures of uncertainty (confidence intervals)", "Findings"),
        (TRIPOD_AI, "discrimination (ROC-AUC) with confidence intervals", "Findings"),
        (
            TRIPOD_AI,
            "how predictions become decisions: thresholds chosen on validation, sensitivity, specificity, PPV at them",
            "Findings, Method",
        ),
        (TRIPOD_AI, "calibration: calibration plot with a measure of calibration (ECE, Brier score)", "Calibration"),
    ]
    if report.get("subgroups", {}).get("available"):
        items += [
            (CLAIM_2024, "performance in subgroups (sex, age, view position) and potential bias", "Subgroup analysis"),
            (TRIPOD_AI, "fairness: performance across sociodemographic groups", "Subgroup analysis"),
        ]
    if report.get("localization", {}).get("overall", {}).get("n_boxes"):
        items.append(
            (
                CLAIM_2024,
                "explainability: saliency maps and how they were validated (against expert boxes)",
                "Localization",
            )
        )
    return [{"checklist": checklist, "topic": topic, "section": section} for checklist, topic, section in items]


# ---- outputs -----------------------------------------------------------------------------------------


def report_markdown(report: dict) -> str:
    """``report.md``: headline macro AUC, a per-finding table in canonical order, No Finding apart."""
    boot, macro = report["bootstrap"], report["auc_macro"]
    confidence = f"{boot['confidence']:.0%}"
    headers = ["Label", "Pos", f"AUC [{confidence} CI]", f"AUPRC [{confidence} CI]", "Resamples"]
    headers += ["Threshold", "Sens", "Spec", "PPV", "F1"]

    def row(label: str, entry: dict) -> list[str]:
        if entry.get("reason") == NOT_ANNOTATED:
            return [label, "-", f"n/a ({NOT_ANNOTATED})", "n/a", "0", f"{entry['threshold']:.3f}", *["n/a"] * 4]
        cells = [label, str(entry["positives"]), format_ci(entry["auc"]), format_ci(entry["auprc"])]
        cells += [str(entry["auc"]["n_resamples"]), f"{entry['threshold']:.3f}"]
        return cells + [number(entry[key]) for key in ("sensitivity", "specificity", "ppv", "f1")]

    averaged = report.get("macro_findings", FINDINGS)
    scope = "the 14 findings" if len(averaged) == len(FINDINGS) else (
        f"the {len(averaged)} findings this set annotates with both classes (of {len(FINDINGS)})"
    )  # fmt: skip
    sources = report.get("sources") or []
    not_annotated = [label for label, entry in report["labels"].items() if entry.get("reason") == NOT_ANNOTATED]

    lines = [
        "# Evaluation report",
        "",
        f"Model `{report.get('model', '?')}` on split `{report.get('split', '?')}` of `{report.get('dataset', '?')}`"
        + (f" (source: {', '.join(sources)})" if sources else "")
        + f": {report['num_images']} images of {report['num_patients']} patients.",
        "",
        f"**Macro ROC-AUC over {scope}: {format_ci(macro)}** ({confidence} CI, percentile bootstrap over "
        f"patients, {macro['n_resamples']} of {boot['n_resamples']} resamples had both classes for every finding).",
        "",
        *(
            [f"Not annotated by this set (no AUC, not in the macro): {', '.join(not_annotated)}.", ""]
            if not_annotated
            else []
        ),
        "## Findings",
        "",
        table(headers, [row(label, report["labels"][label]) for label in FINDINGS], aligned=True),
        "",
        f"## {NO_FINDING}",
        "",
        "Reported apart and not in the macro average, as in the literature.",
        "",
        table(headers, [row(NO_FINDING, report["no_finding"])], aligned=True),
        "",
        *(external_markdown(report["external_validation"]) if "external_validation" in report else []),
        *(calibration_markdown(report["calibration"], report.get("split", "?")) if "calibration" in report else []),
        *(subgroups_markdown(report["subgroups"]) if "subgroups" in report else []),
        *(localization_markdown(report["localization"]) if "localization" in report else []),
        "## Method",
        "",
        f"- Confidence intervals: {boot['n_resamples']} resamples of the patients with replacement (seed "
        f"{boot['seed']}), each metric on the pooled images of the drawn patients; `Resamples` counts those in "
        "which the label had both classes (the others have no AUC and are left out).",
        f"- Thresholds: {report['threshold_rule']}"
        + (
            f" (`{report.get('validation_split', 'validation')}`, {report['num_validation_images']} images)"
            if report.get("num_validation_images") is not None
            else ""
        )
        + "; a label is positive when its probability is >= its threshold. Sensitivity, specificity, PPV and F1 are "
        "measured on the evaluated split.",
        "- Labels in canonical NIH order; `n/a`: undefined on this split (one class, or no predicted positives; "
        "`not annotated`: no image of the set has a known value for it); a label without an AUC is left out of the "
        "macro average. Missing labels (a source that does not annotate a label, or an uncertain one) are skipped: "
        "each label is scored over the images where it is known.",
        f"- Inference: timm's eval transform of the model, {report.get('precision', 'fp32')}; probabilities: "
        f"{report.get('averaged', {}).get('rule', 'one view of one model')}"
        + (f" ({', '.join(report['models'])})" if len(report.get("models") or []) > 1 else "")
        + ".",
        *checklist_markdown(report.get("checklist", [])),
        "",
    ]
    if report.get("thresholds_file"):
        lines += [f"Thresholds written to `{report['thresholds_file']}`.", ""]
    if report.get("thresholds_saved_to"):
        lines += [f"Thresholds stored in `{report['thresholds_saved_to']}` (key `{THRESHOLDS_KEY}`).", ""]
    return "\n".join(lines)


def calibration_markdown(section: dict, split: str) -> list[str]:
    """The Calibration section: macro and per-label ECE and Brier, before and after for a temperature-scaled model."""
    model, before, scaling = section["model"], section["uncalibrated"], section["scaling"]
    lines = ["## Calibration", ""]
    if before is None:
        lines += [
            f"Macro over the 14 findings on `{split}`: **ECE {model['ece_macro']:.3f}**, Brier "
            f"{model['brier_macro']:.3f}. The model is not temperature-scaled: `scripts/calibrate.py` fits T (and b) "
            "per label on validation.",
            "",
        ]
        headers = ["Label", "Pos", "ECE", "Brier"]

        def cells(label: str) -> list[str]:
            return [number(model["labels"][label]["ece"]), number(model["labels"][label]["brier"])]

    else:
        fitted = scaling.get("fitted_on") or {}
        where = ", ".join(f"{key} `{value}`" for key, value in fitted.items()) or "not recorded"
        lines += [
            f"Macro over the 14 findings on `{split}`: **ECE {before['ece_macro']:.3f} before temperature scaling, "
            f"{model['ece_macro']:.3f} after**; Brier {before['brier_macro']:.3f} before, {model['brier_macro']:.3f} "
            "after.",
            "",
            f"The model is temperature-scaled ({scaling.get('method', 'temperature scaling')}; fitted on: {where}). "
            "Its config records T and b per label, so the original head comes back (W T, (b' - b) T) and the "
            "probabilities before the scaling are predicted by it, the same inference path. Scaling is monotone per "
            "label: AUCs and the decisions at the thresholds do not change.",
            "",
        ]
        if scaling.get("bias_rule"):
            lines += [f"Bias: {scaling['bias_rule']}.", ""]
        headers = ["Label", "Pos", "T", "b", "ECE before", "ECE after", "Brier before", "Brier after"]

        def cells(label: str) -> list[str]:
            entry = scaling["labels"][label]
            values = [before["labels"][label]["ece"], model["labels"][label]["ece"]]
            values += [before["labels"][label]["brier"], model["labels"][label]["brier"]]
            return [f"{entry['temperature']:.3f}", f"{entry['bias']:+.3f}", *map(number, values)]

    rows = [[label, str(model["labels"][label]["positives"]), *cells(label)] for label in LABELS]
    lines += [
        table(headers, rows, aligned=True),
        "",
        f"ECE: {model['binning']}; a bin weighs by its share of the images, so ECE is small for a rare label whose "
        "probabilities are all near 0 even when the few positives are missed: read it with the reliability diagrams "
        "(grey bars: images per bin).",
        "",
        "![Reliability diagrams](reliability_diagram.png)",
        "",
    ]
    return lines


def subgroups_markdown(section: dict) -> list[str]:
    """The Subgroup analysis section (:func:`cxr_vit.evaluation.subgroups.subgroup_markdown`), or why there is none."""
    if not section.get("available"):
        return ["## Subgroup analysis", "", f"Not available: {section.get('reason', 'not computed')}.", ""]
    lines = [subgroup_markdown(section)]
    if section.get("missing_columns"):
        lines += [f"Not in this split, so not analysed: {', '.join(section['missing_columns'])}.", ""]
    return lines + ["![Subgroup macro AUCs](subgroup_forest.png)", ""]


def localization_markdown(section: dict) -> list[str]:
    """The Localization section: explainer, box counts, then :func:`.localization.localization_markdown`."""
    notes = [
        f"Heatmaps: `{section['explainer']}` ({section['explainer_choice']}), the map of each boxed finding on its "
        f"image. Boxes: `{section['bbox_csv']}`, {section['n_boxes_scored']} of its {section['n_boxes_in_file']} "
        f"boxes are on {section['n_images']} images of this split"
        + (
            f" ({section['n_boxes_cropped']} fall outside the model's center crop and count as misses)"
            if section["n_boxes_cropped"]
            else ""
        )
        + ".",
    ]
    if not section["n_boxes_scored"]:
        return ["## Localization", "", *notes, "", "No box is on an image of this split: nothing to score.", ""]
    overall = section["overall"]
    notes.append(
        f"Chance level of the pointing game: {overall['chance_pointing']:.3f} (the boxes' mean share of the model "
        "input: a map peaking at a random place hits that often)."
    )
    return [localization_table(section, reference=section.get("reference"), notes=notes)]


def checklist_markdown(items: list[dict[str, str]]) -> list[str]:
    """Method bullets: the reporting-checklist topics this run covered (topics, not item numbers)."""
    if not items:
        return []
    lines = [
        "- Reporting checklists: this run covers these topics (named by topic, not item number; the other "
        "items are about study design and data, which no script can fill in):"
    ]
    lines += [f"  - {item['checklist']}: {item['topic']} ({item['section']})" for item in items]
    return lines


def plot_curves(probabilities: np.ndarray, targets: np.ndarray, path: str | os.PathLike, kind: str = "roc") -> None:
    """15 panels (canonical order) of ROC (``kind="roc"``) or precision-recall (``"pr"``) curves, score in titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    if kind not in ("roc", "pr"):
        raise ValueError(f"kind must be 'roc' or 'pr', got {kind!r}")
    figure, axes = plt.subplots(3, 5, figsize=(20, 12.5))
    targets = np.asarray(targets, dtype=np.float64)
    for index, (axis, label) in enumerate(zip(axes.flat, LABELS, strict=True)):
        column, scores = calibration.known_column(probabilities, targets, index)
        if not column.size:
            axis.set_title(f"{label}\nnot annotated")
            axis.text(0.5, 0.5, "not annotated\nin this set", ha="center", va="center", transform=axis.transAxes)
            continue
        if column.min() == column.max():
            axis.set_title(f"{label}\n{'AUC' if kind == 'roc' else 'AP'} n/a (one class)")
            axis.text(0.5, 0.5, "only one class\nin this split", ha="center", va="center", transform=axis.transAxes)
            continue
        if kind == "roc":
            RocCurveDisplay.from_predictions(column, scores, ax=axis, name=label, plot_chance_level=True)
            axis.set_title(f"{label}\nAUC {roc_auc_score(column, scores):.3f}")
        else:
            PrecisionRecallDisplay.from_predictions(column, scores, ax=axis, name=label, plot_chance_level=True)
            axis.set_title(
                f"{label}\nAP {average_precision_score(column, scores):.3f} (prevalence {column.mean():.3f})"
            )
        if axis.get_legend() is not None:
            axis.get_legend().remove()
        axis.set_xlabel("1 - specificity" if kind == "roc" else "recall (sensitivity)")
        axis.set_ylabel("sensitivity" if kind == "roc" else "precision (PPV)")
    figure.suptitle("ROC curves" if kind == "roc" else "Precision-recall curves (dashed: prevalence)")
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _json_safe(value):
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


REPORT_FILES = (
    "report.json",
    "report.md",
    "roc_curves.png",
    "pr_curves.png",
    "reliability_diagram.png",
    "subgroup_forest.png",
    THRESHOLDS_FILE,
)


def write_report(evaluation: Evaluation, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ROC and PR curves, the reliability diagrams and, when there were
    subgroups, their forest plot; return their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = ["report.json", "report.md", "roc_curves.png", "pr_curves.png", "reliability_diagram.png"]
    report = evaluation.report
    if report.get("subgroups", {}).get("available"):
        names.append("subgroup_forest.png")
    paths = {name: output_dir / name for name in names}
    paths["report.json"].write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    paths["report.md"].write_text(report_markdown(report))
    plot_curves(evaluation.probabilities, evaluation.targets, paths["roc_curves.png"], "roc")
    plot_curves(evaluation.probabilities, evaluation.targets, paths["pr_curves.png"], "pr")
    if evaluation.uncalibrated is None:
        calibration.plot_reliability(evaluation.probabilities, evaluation.targets, paths["reliability_diagram.png"])
    else:
        calibration.plot_reliability(
            evaluation.uncalibrated,
            evaluation.targets,
            paths["reliability_diagram.png"],
            calibrated=evaluation.probabilities,
        )
    if "subgroup_forest.png" in paths:
        plot_subgroup_forest(report["subgroups"], paths["subgroup_forest.png"])
    return paths
