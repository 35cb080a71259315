"""Subgroup analysis by sex, age band and view position: AUCs with patient-bootstrap CIs, TPR/FPR gaps, underdiagnosis.

A model can match the literature's macro AUC overall and still fail one group of patients; reporting standards
for medical imaging AI ask for performance per subgroup. Attributes and groups:

* sex: ``F``, ``M`` (NIH's ``Patient Gender``);
* age: ``0-17``, ``18-39``, ``40-59``, ``60-79``, ``80+`` years (bands [0, 18), [18, 40), ... ; ages outside
  [0, 120] are implausible NIH entries and left unassigned);
* view position: ``PA``, ``AP``.

Images without a valid value are counted as ``unassigned`` for that attribute, not dropped silently.

Per group: images, patients, positives and prevalence per label; ROC-AUC per label and the macro AUC with
percentile intervals from patient resamples (``cxr_vit.evaluation.bootstrap_report`` on the group's rows); TPR
and FPR at the validation-chosen thresholds (positive when probability >= threshold); and the **underdiagnosis
rate** of Seyyed-Kalantari et al. (Nature Medicine 2021): among images with at least one of the 14 findings, the
share the model calls "No Finding", i.e. No Finding probability >= its threshold, or no finding at or above its
threshold. Numerator and denominator are reported with a patient-bootstrap interval of the rate.

Small numbers are said, not printed as noise:

* a group with fewer than ``min_images`` images (default 50) is reported with counts only;
* a label with fewer than ``min_cases`` positives or negatives (default 10) in a group has no AUC there
  (``"n/a (too few: 3 positives)"``); TPR needs ``min_cases`` positives, FPR ``min_cases`` negatives and the
  underdiagnosis rate ``min_cases`` images with findings;
* a group's macro AUC averages the findings that have an AUC in that group; the report lists them, and says when
  the groups of an attribute average different findings (their macros are then not strictly comparable).

Per attribute and label, the TPR gap and FPR gap are the largest minus the smallest rate over the groups that
have one (Seyyed-Kalantari et al. compare such rates between groups).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from ..constants import FINDING_IDS, FINDINGS, LABEL2ID, LABELS, NO_FINDING, NUM_LABELS
from ..markdown import format_ci, number, table
from .bootstrap import bootstrap_report, interval, patient_resamples

MIN_IMAGES = 50
MIN_CASES = 10
MAX_AGE = 120
SEX_GROUPS: tuple[str, ...] = ("F", "M")
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("0-17", 0, 18),
    ("18-39", 18, 40),
    ("40-59", 40, 60),
    ("60-79", 60, 80),
    ("80+", 80, MAX_AGE + 1),
)
VIEW_GROUPS: tuple[str, ...] = ("PA", "AP")
ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "sex": SEX_GROUPS,
    "age": tuple(name for name, _, _ in AGE_BANDS),
    "view_position": VIEW_GROUPS,
}
ATTRIBUTE_TITLES = {"sex": "Sex", "age": "Age (years)", "view_position": "View position"}
NO_FINDING_ID = LABEL2ID[NO_FINDING]
UNDERDIAGNOSIS_RULE = (
    "among images with at least one of the 14 findings, the share called 'No Finding' (No Finding probability >= "
    "its threshold, or no finding probability >= its threshold); Seyyed-Kalantari et al., Nat Med 2021"
)


# ---- groups ------------------------------------------------------------------------------------------


def sex_groups(sex: Sequence) -> np.ndarray:
    """``F`` / ``M`` per image (case and spaces ignored), None for anything else."""
    cleaned = [str(value).strip().upper() if value is not None else "" for value in sex]
    return np.array([value if value in SEX_GROUPS else None for value in cleaned], dtype=object)


def age_groups(age: Sequence) -> np.ndarray:
    """Age band per image (``0-17`` ... ``80+``), None for a missing or implausible age (< 0 or > 120)."""
    years = np.array([np.nan if value is None else float(value) for value in age])
    groups = np.full(years.shape, None, dtype=object)
    for name, low, high in AGE_BANDS:
        groups[(years >= low) & (years < high) & (years <= MAX_AGE)] = name
    return groups


def view_groups(view_position: Sequence) -> np.ndarray:
    """``PA`` / ``AP`` per image, None for anything else (NIH has only these two)."""
    cleaned = [str(value).strip().upper() if value is not None else "" for value in view_position]
    return np.array([value if value in VIEW_GROUPS else None for value in cleaned], dtype=object)


def attribute_groups(
    sex: Sequence | None = None, age: Sequence | None = None, view_position: Sequence | None = None
) -> dict[str, np.ndarray]:
    """Group name (or None: unassigned) per image for each attribute given."""
    groups = {}
    if sex is not None:
        groups["sex"] = sex_groups(sex)
    if age is not None:
        groups["age"] = age_groups(age)
    if view_position is not None:
        groups["view_position"] = view_groups(view_position)
    return groups


# ---- per group ---------------------------------------------------------------------------------------


def _threshold_vector(thresholds: Mapping[str, float] | Sequence[float]) -> np.ndarray:
    if isinstance(thresholds, Mapping):
        missing = [label for label in LABELS if label not in thresholds]
        if missing:
            raise ValueError(f"thresholds lack {missing}")
        return np.array([float(thresholds[label]) for label in LABELS])
    vector = np.asarray(thresholds, dtype=np.float64)
    if vector.shape != (NUM_LABELS,):
        raise ValueError(f"thresholds must be 15 values in canonical order, got shape {vector.shape}")
    return vector


def called_no_finding(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per image: the model's answer is "No Finding" (its probability >= threshold, or no finding >= threshold)."""
    positive = probabilities >= thresholds
    return positive[:, NO_FINDING_ID] | ~positive[:, FINDING_IDS].any(axis=1)


def _too_few(positives: int, negatives: int, min_cases: int) -> str | None:
    short = [
        f"{count} {name}" for count, name in ((positives, "positives"), (negatives, "negatives")) if count < min_cases
    ]
    return f"n/a (too few: {', '.join(short)})" if short else None


def _na_interval(note: str) -> dict:
    return {"value": None, "ci_low": None, "ci_high": None, "n_resamples": 0, "note": note}


def _rate(numerator: int, denominator: int, min_cases: int, what: str, group_note: str | None) -> dict:
    counts = {"numerator": numerator, "denominator": denominator}
    if group_note is not None:
        return {"value": None, **counts, "note": group_note}
    if denominator < min_cases:
        return {"value": None, **counts, "note": f"n/a (too few: {denominator} {what})"}
    return {"value": numerator / denominator, **counts, "note": None}


def _patient_rate_interval(
    hits: np.ndarray, counted: np.ndarray, patients: np.ndarray, n_bootstrap: int, seed: int, confidence: float
) -> dict:
    """sum(hits) / sum(counted) with a percentile interval over patient resamples (:func:`patient_resamples`)."""
    _, index = np.unique(patients, return_inverse=True)
    per_patient_hits = np.bincount(index, weights=hits.astype(np.float64))
    per_patient_counted = np.bincount(index, weights=counted.astype(np.float64))
    samples = np.empty(n_bootstrap)
    for rows, counts in patient_resamples(per_patient_hits.size, n_bootstrap, seed, chunk_size=100):
        numerator, denominator = counts @ per_patient_hits, counts @ per_patient_counted
        with np.errstate(invalid="ignore", divide="ignore"):
            samples[rows] = np.where(denominator > 0, numerator / denominator, np.nan)
    return interval(per_patient_hits.sum() / per_patient_counted.sum(), samples, confidence)


def group_metrics(
    probabilities: np.ndarray,
    targets: np.ndarray,
    thresholds: np.ndarray,
    patient_ids: np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    min_images: int = MIN_IMAGES,
    min_cases: int = MIN_CASES,
) -> dict:
    """Counts, AUCs with patient-bootstrap CIs, TPR/FPR and underdiagnosis of one group (its rows only)."""
    targets = np.asarray(targets, dtype=np.float64).reshape(-1, NUM_LABELS)  # NaN: missing, in no count
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1, NUM_LABELS)
    n_images = len(targets)
    evaluated = n_images >= min_images
    note = None if evaluated else f"counts only: {n_images} images (< {min_images})"
    entry: dict = {
        "n_images": int(n_images),
        "n_patients": int(len(np.unique(patient_ids))),
        "evaluated": bool(evaluated),
        "note": note,
    }
    positives = (targets == 1).sum(axis=0)
    known = np.isfinite(targets).sum(axis=0)
    predicted = probabilities >= thresholds
    with_findings = (targets[:, FINDING_IDS] == 1).any(axis=1)
    missed = called_no_finding(probabilities, thresholds) & with_findings

    labels = {}
    for index, label in enumerate(LABELS):
        pos, neg = int(positives[index]), int(known[index] - positives[index])
        tp = int((predicted[:, index] & (targets[:, index] == 1)).sum())
        fp = int((predicted[:, index] & (targets[:, index] == 0)).sum())
        labels[label] = {
            "positives": pos,
            "negatives": neg,
            "prevalence": pos / (pos + neg) if pos + neg else None,
            "tpr": _rate(tp, pos, min_cases, "positives", note),
            "fpr": _rate(fp, neg, min_cases, "negatives", note),
        }
    entry["labels"] = labels
    numerator, denominator = int(missed.sum()), int(with_findings.sum())
    counts = {"numerator": numerator, "denominator": denominator}

    if not evaluated:
        for label in LABELS:
            labels[label]["auc"] = _na_interval(note)
        entry["auc_macro"] = {**_na_interval(note), "findings": []}
        entry["underdiagnosis"] = {**counts, **_na_interval(note)}
        return entry

    # bootstrap_report averages the findings with an AUC on the rows it is given: a label without enough cases is
    # passed as all-negative, so it has no AUC there and stays out of the macro.
    notes = {label: _too_few(labels[label]["positives"], labels[label]["negatives"], min_cases) for label in LABELS}
    usable = np.array([notes[label] is None for label in LABELS])
    # Small groups lack labels by design (noted per label here), so no "no AUC" warning per group.
    boot = bootstrap_report(
        probabilities, np.where(usable, targets, 0), patient_ids, n_bootstrap, seed, confidence, warn=False
    )
    for label in LABELS:
        auc = boot["labels"][label]["auc"]
        labels[label]["auc"] = {**auc, "note": None} if notes[label] is None else _na_interval(notes[label])
    findings = [label for label in FINDINGS if notes[label] is None]
    macro_note = None if findings else f"n/a (no finding has {min_cases} positives and {min_cases} negatives)"
    entry["auc_macro"] = {**boot["auc_macro"], "findings": findings, "note": macro_note}

    if denominator < min_cases:
        entry["underdiagnosis"] = {**counts, **_na_interval(f"n/a (too few: {denominator} images with findings)")}
    else:
        ci = _patient_rate_interval(missed, with_findings, np.asarray(patient_ids), n_bootstrap, seed, confidence)
        entry["underdiagnosis"] = {**counts, **ci, "note": None}
    return entry


def _gap(entries: Mapping[str, dict], pick) -> dict:
    values = {name: pick(entry) for name, entry in entries.items()}
    values = {name: value for name, value in values.items() if value is not None}
    if len(values) < 2:
        return {
            "gap": None,
            "max_group": None,
            "min_group": None,
            "groups": sorted(values),
            "note": "n/a (fewer than 2 groups with enough cases)",
        }
    high, low = max(values, key=values.get), min(values, key=values.get)
    return {
        "gap": values[high] - values[low],
        "max_group": high,
        "min_group": low,
        "groups": list(values),
        "note": None,
    }


def subgroup_report(
    probabilities: np.ndarray,
    targets: np.ndarray,
    thresholds: Mapping[str, float] | Sequence[float],
    patient_ids: Sequence,
    sex: Sequence | None = None,
    age: Sequence | None = None,
    view_position: Sequence | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    min_images: int = MIN_IMAGES,
    min_cases: int = MIN_CASES,
) -> dict:
    """The subgroup section of the report: overall, then per attribute and group (see the module docstring).

    ``probabilities`` and ``targets`` are ``(n, 15)`` in canonical order, ``thresholds`` the validation-chosen
    ones (dict by label or 15 values), ``patient_ids`` the resampling unit, and each metadata column ``(n,)``
    (an attribute left as None is skipped). Every value is JSON-safe (None where undefined).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    patient_ids = np.asarray(patient_ids)
    cut = _threshold_vector(thresholds)
    if probabilities.shape != targets.shape or probabilities.ndim != 2 or probabilities.shape[1] != NUM_LABELS:
        raise ValueError(f"probabilities and targets must both be (n, 15); got {probabilities.shape}, {targets.shape}")
    if len(patient_ids) != len(targets):
        raise ValueError(f"{len(patient_ids)} patient ids for {len(targets)} images")
    options = {
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "confidence": confidence,
        "min_images": min_images,
        "min_cases": min_cases,
    }

    def metrics(rows: np.ndarray) -> dict:
        return group_metrics(probabilities[rows], targets[rows], cut, patient_ids[rows], **options)

    attributes = {}
    for attribute, groups in attribute_groups(sex, age, view_position).items():
        if len(groups) != len(targets):
            raise ValueError(f"{attribute}: {len(groups)} values for {len(targets)} images")
        entries = {name: metrics(groups == name) for name in ATTRIBUTE_GROUPS[attribute]}
        evaluated = {name: entry for name, entry in entries.items() if entry["evaluated"]}
        finding_sets = {tuple(entry["auc_macro"]["findings"]) for entry in evaluated.values()}
        attributes[attribute] = {
            "groups": entries,
            "unassigned": int(sum(group is None for group in groups)),
            "macro_findings_differ": len(finding_sets) > 1,
            "gaps": {
                label: {
                    "tpr": _gap(evaluated, lambda entry, label=label: entry["labels"][label]["tpr"]["value"]),
                    "fpr": _gap(evaluated, lambda entry, label=label: entry["labels"][label]["fpr"]["value"]),
                }
                for label in LABELS
            },
            "underdiagnosis_gap": _gap(evaluated, lambda entry: entry["underdiagnosis"]["value"]),
        }
    return {
        "settings": {
            **options,
            "thresholds": {label: float(value) for label, value in zip(LABELS, cut, strict=True)},
            "age_bands": [name for name, _, _ in AGE_BANDS],
            "rules": {
                "groups": f"a group with fewer than {min_images} images is reported with counts only",
                "auc": f"a label needs {min_cases} positives and {min_cases} negatives in a group for an AUC",
                "rates": f"TPR needs {min_cases} positives, FPR {min_cases} negatives (positive: probability >= "
                "the validation-chosen threshold)",
                "macro": "a group's macro AUC is the mean AUC over the findings with an AUC in that group (listed)",
                "intervals": "intervals are percentiles over patient resamples (cxr_vit.evaluation.bootstrap_report)",
                "underdiagnosis": UNDERDIAGNOSIS_RULE,
            },
        },
        "overall": metrics(np.ones(len(targets), dtype=bool)),
        "attributes": attributes,
    }


# ---- outputs -----------------------------------------------------------------------------------------


def _gap_cell(gap: dict) -> str:
    return "n/a" if gap["gap"] is None else f"{gap['gap']:.3f} ({gap['max_group']} > {gap['min_group']})"


def underdiagnosis_cell(entry: dict) -> str:
    """``12/80: 0.150 [0.080, 0.230]``, or the counts with the reason there is no rate."""
    counts = f"{entry['numerator']}/{entry['denominator']}"
    if entry["value"] is not None:
        return f"{counts}: {format_ci(entry)}"
    return counts if entry["note"].startswith("counts only") else f"{counts} {entry['note']}"


def macro_cell(entry: dict) -> str:
    """A group's macro AUC with its CI and how many findings it averages, or why it has none."""
    macro = entry["auc_macro"]
    if macro["value"] is None:
        return macro.get("note") or "n/a"
    return f"{format_ci(macro)} ({len(macro['findings'])}/{len(FINDINGS)} findings)"


def subgroup_markdown(report: dict) -> str:
    """The ``report.md`` section: a summary table per attribute, then per-label AUCs and TPR/FPR with their gaps."""
    settings = report["settings"]
    confidence = f"{settings['confidence']:.0%}"
    overall = report["overall"]
    lines = [
        "## Subgroup analysis",
        "",
        f"All images: macro ROC-AUC {macro_cell(overall)}; underdiagnosed "
        f"{underdiagnosis_cell(overall['underdiagnosis'])}.",
        "",
    ]
    for attribute, section in report["attributes"].items():
        groups = section["groups"]
        lines += [f"### {ATTRIBUTE_TITLES.get(attribute, attribute)}", ""]
        headers = ["Group", "Images", "Patients", f"Macro AUC [{confidence} CI]", "Underdiagnosed / with findings"]
        summary = [
            [
                name,
                str(entry["n_images"]),
                str(entry["n_patients"]),
                entry["note"] or macro_cell(entry),
                underdiagnosis_cell(entry["underdiagnosis"]),
            ]
            for name, entry in groups.items()
        ]
        lines += [table(headers, summary), ""]
        notes = [f"{section['unassigned']} images without a valid {attribute.replace('_', ' ')} are in no group."]
        if section["macro_findings_differ"]:
            notes.append("The groups' macro AUCs average different findings (too few cases in some groups).")
        if section["underdiagnosis_gap"]["gap"] is not None:
            notes.append(f"Underdiagnosis gap: {_gap_cell(section['underdiagnosis_gap'])}.")
        lines += [" ".join(notes), ""]

        evaluated = [name for name, entry in groups.items() if entry["evaluated"]]
        if not evaluated:
            lines += ["No group has enough images for AUCs or rates.", ""]
            continue
        auc_rows = [
            [label] + [format_ci(groups[name]["labels"][label]["auc"]) for name in evaluated] for label in LABELS
        ]
        lines += [f"AUC per label [{confidence} CI]:", "", table(["Label"] + evaluated, auc_rows), ""]
        rate_rows = []
        for label in LABELS:
            rates = [groups[name]["labels"][label] for name in evaluated]
            cells = [f"{number(rate['tpr']['value'])} / {number(rate['fpr']['value'])}" for rate in rates]
            gaps = section["gaps"][label]
            rate_rows.append([label, *cells, _gap_cell(gaps["tpr"]), _gap_cell(gaps["fpr"])])
        headers = ["Label"] + [f"{name} TPR / FPR" for name in evaluated] + ["TPR gap", "FPR gap"]
        lines += ["TPR / FPR at the validation thresholds:", "", table(headers, rate_rows), ""]
    rules = settings["rules"]
    lines += [
        "Method: " + "; ".join(rules[key] for key in ("groups", "auc", "rates", "macro", "intervals")) + ". "
        f"Underdiagnosis: {rules['underdiagnosis']}. `n/a (too few: ...)`: not enough cases to estimate.",
        "",
    ]
    return "\n".join(lines)


def plot_subgroup_forest(report: dict, path: str | os.PathLike) -> None:
    """Forest plot: one row per group (grouped by attribute) with its macro AUC and CI; the overall macro as a line.

    Groups without a macro (counts only, or no finding with enough cases) keep their row with the reason; a macro
    over fewer than the 14 findings is marked ``k/14``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, dict | None]] = []
    for attribute, section in report["attributes"].items():
        rows.append((ATTRIBUTE_TITLES.get(attribute, attribute), None))
        rows += [(f"{name} (n={entry['n_images']})", entry) for name, entry in section["groups"].items()]
    figure, axis = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.6))
    overall = report["overall"]["auc_macro"]
    lows = [overall["ci_low"] or 0.5] + [
        entry["auc_macro"]["ci_low"] or entry["auc_macro"]["value"]
        for _, entry in rows
        if entry is not None and entry["auc_macro"]["value"] is not None
    ]
    if overall["value"] is not None:
        count = len(overall["findings"])
        share = f" ({count}/{len(FINDINGS)})" if count < len(FINDINGS) else ""
        axis.axvline(
            overall["value"],
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"all images {format_ci(overall)}{share}",
        )
        if overall["ci_low"] is not None:
            axis.axvspan(overall["ci_low"], overall["ci_high"], color="tab:red", alpha=0.1)
    axis.axvline(0.5, color="grey", linewidth=0.8)
    for position, (_, entry) in enumerate(rows):
        y = len(rows) - 1 - position
        if entry is None:
            continue
        macro = entry["auc_macro"]
        if macro["value"] is None:
            axis.text(
                0.02,
                y,
                macro.get("note") or "n/a",
                va="center",
                fontsize=8,
                color="grey",
                transform=axis.get_yaxis_transform(),
            )
            continue
        low = macro["ci_low"] if macro["ci_low"] is not None else macro["value"]
        high = macro["ci_high"] if macro["ci_high"] is not None else macro["value"]
        axis.errorbar(
            macro["value"],
            y,
            # a percentile interval of a small group need not contain the point estimate: no negative bar
            xerr=[[max(macro["value"] - low, 0.0)], [max(high - macro["value"], 0.0)]],
            fmt="o",
            color="tab:blue",
            capsize=3,
        )
        if len(macro["findings"]) < len(FINDINGS):
            axis.annotate(
                f"{len(macro['findings'])}/{len(FINDINGS)}",
                (high, y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color="grey",
            )
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels([name for name, _ in rows][::-1])
    for tick, (_, entry) in zip(axis.get_yticklabels(), rows[::-1], strict=True):
        if entry is None:
            tick.set_fontweight("bold")
    axis.set_xlim(min(0.45, min(lows) - 0.02), 1.0)
    axis.set_ylim(-0.7, len(rows) - 0.3)
    confidence = f"{report['settings']['confidence']:.0%}"
    axis.set_xlabel(f"macro ROC-AUC over the findings with enough cases ({confidence} CI, patient bootstrap)")
    axis.set_title(f"Subgroup macro AUC (k/{len(FINDINGS)}: fewer findings had enough cases)")
    if overall["value"] is not None:
        axis.legend(loc="upper left", fontsize=8)  # the first row is an attribute title: nothing drawn there
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
