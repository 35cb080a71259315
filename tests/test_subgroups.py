"""Subgroup analysis on synthetic data with known answers, and on the real metadata of the bundled mini set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxr_vit.constants import FINDINGS, LABEL2ID, LABELS, NO_FINDING
from cxr_vit.data.nih import multi_hot_matrix, read_labels_csv
from cxr_vit.evaluation.subgroups import (
    age_groups,
    attribute_groups,
    called_no_finding,
    plot_subgroup_forest,
    sex_groups,
    subgroup_markdown,
    subgroup_report,
    view_groups,
)

MINI_CSV = Path(__file__).resolve().parents[1] / "data" / "nih_mini" / "sample_labels.csv"
NF = LABEL2ID[NO_FINDING]
HALF = np.full(len(LABELS), 0.5)


def test_group_assignment():
    assert sex_groups(["M", "F", " f", "O", None]).tolist() == ["M", "F", "F", None, None]
    bands = {0: "0-17", 17.9: "0-17", 18: "18-39", 39: "18-39", 40: "40-59", 60: "60-79", 79: "60-79", 80: "80+"}
    bands |= {120: "80+", 121: None, -1: None}
    assert age_groups(list(bands) + [None]).tolist() == list(bands.values()) + [None]
    assert view_groups(["PA", "AP", "ap", "LL"]).tolist() == ["PA", "AP", "AP", None]
    assert set(attribute_groups(sex=["M"], view_position=["PA"])) == {"sex", "view_position"}


def test_called_no_finding_rule():
    probabilities = np.full((4, len(LABELS)), 0.1)
    probabilities[0, NF] = 0.9  # No Finding above its threshold: "No Finding" even with a finding above too
    probabilities[0, 0] = 0.9
    probabilities[1, 0] = 0.5  # a finding exactly at its threshold is called (>=)
    probabilities[3, NF] = 0.5  # No Finding exactly at its threshold
    assert called_no_finding(probabilities, HALF).tolist() == [True, False, True, True]


def perfect_for_women(seed: int = 0, n: int = 4000, prevalence: float = 0.2):
    """Half women (ranked perfectly by the model), half men (random scores); two images per patient."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, len(LABELS))) < prevalence).astype(int)
    sex = np.array(["F", "M"] * (n // 2))
    women = sex == "F"
    probabilities = rng.random(targets.shape)
    probabilities[women] = np.where(targets[women] == 1, 0.6, 0.0) + 0.4 * rng.random(targets[women].shape)
    patients = np.arange(n) // 4 * 2 + (sex == "M")  # images 0, 2 of a block: one woman; 1, 3: one man
    return probabilities, targets, sex, patients


def test_perfect_for_women_random_for_men():
    probabilities, targets, sex, patients = perfect_for_women()
    report = subgroup_report(probabilities, targets, HALF, patients, sex=sex, n_bootstrap=200)
    women, men = report["attributes"]["sex"]["groups"]["F"], report["attributes"]["sex"]["groups"]["M"]
    assert women["n_images"] == men["n_images"] == 2000 and women["n_patients"] == men["n_patients"] == 1000
    assert women["auc_macro"]["value"] == 1.0 and women["auc_macro"]["ci_low"] == 1.0
    assert all(women["labels"][label]["auc"]["value"] == 1.0 for label in LABELS)
    assert men["auc_macro"]["value"] == pytest.approx(0.5, abs=0.02)
    assert men["auc_macro"]["ci_low"] < 0.5 < men["auc_macro"]["ci_high"] < 0.55
    assert men["auc_macro"]["findings"] == list(FINDINGS) and men["auc_macro"]["n_resamples"] == 200
    assert 0.7 < report["overall"]["auc_macro"]["value"] < 0.8
    # At 0.5 the women's scores (positives >= 0.6, negatives < 0.4) are perfect: TPR 1, FPR 0.
    mass = women["labels"]["Mass"]
    assert mass["tpr"]["value"] == 1.0 and mass["fpr"]["value"] == 0.0
    assert mass["tpr"]["denominator"] == mass["positives"] and mass["prevalence"] == pytest.approx(0.2, abs=0.03)
    gaps = report["attributes"]["sex"]["gaps"]["Mass"]
    assert gaps["tpr"]["max_group"] == "F" and gaps["tpr"]["gap"] == pytest.approx(0.5, abs=0.06)
    assert gaps["fpr"]["max_group"] == "M" and gaps["fpr"]["gap"] == pytest.approx(0.5, abs=0.06)
    assert not report["attributes"]["sex"]["macro_findings_differ"]
    json.dumps(report, allow_nan=False)


def planted_underdiagnosis():
    """Group A: 3 of 10 images with findings called No Finding (+ 2 normals); group B: 1 of 12 (+ 4 normals)."""
    rows = []
    for group, with_findings, missed_nf, missed_silent, normals in (("A", 10, 2, 1, 2), ("B", 12, 1, 0, 4)):
        for index in range(with_findings):
            target = np.zeros(len(LABELS), dtype=int)
            target[LABEL2ID["Effusion"]] = 1
            probability = np.full(len(LABELS), 0.2)
            probability[LABEL2ID["Effusion"]] = 0.9  # found ...
            if index < missed_nf:
                probability[NF] = 0.8  # ... but No Finding is called too: underdiagnosed
            elif index < missed_nf + missed_silent:
                probability[LABEL2ID["Effusion"]] = 0.3  # nothing at or above its threshold: underdiagnosed
            rows.append((group, target, probability))
        for _ in range(normals):
            target = np.zeros(len(LABELS), dtype=int)
            target[NF] = 1
            rows.append((group, target, np.full(len(LABELS), 0.2)))  # called No Finding, but not a miss
    groups = np.array([row[0] for row in rows])
    return np.array([row[2] for row in rows]), np.array([row[1] for row in rows]), groups


def test_planted_underdiagnosis_rate():
    probabilities, targets, groups = planted_underdiagnosis()
    view = np.where(groups == "A", "AP", "PA")
    report = subgroup_report(
        probabilities,
        targets,
        HALF,
        np.arange(len(groups)),
        view_position=view,
        n_bootstrap=100,
        min_images=5,
        min_cases=5,
    )
    ap, pa = (report["attributes"]["view_position"]["groups"][name]["underdiagnosis"] for name in ("AP", "PA"))
    assert (ap["numerator"], ap["denominator"], ap["value"]) == (3, 10, 0.3)
    assert (pa["numerator"], pa["denominator"]) == (1, 12) and pa["value"] == pytest.approx(1 / 12)
    assert ap["ci_low"] <= 0.3 <= ap["ci_high"]
    overall = report["overall"]["underdiagnosis"]
    assert (overall["numerator"], overall["denominator"]) == (4, 22)
    gap = report["attributes"]["view_position"]["underdiagnosis_gap"]
    assert gap["max_group"] == "AP" and gap["gap"] == pytest.approx(0.3 - 1 / 12)
    # With the default minimum of 10 images with findings, both still have a rate; with 11, AP does not.
    strict = subgroup_report(
        probabilities,
        targets,
        HALF,
        np.arange(len(groups)),
        view_position=view,
        n_bootstrap=20,
        min_images=5,
        min_cases=11,
    )
    ap_strict = strict["attributes"]["view_position"]["groups"]["AP"]["underdiagnosis"]
    assert ap_strict["value"] is None and ap_strict["note"] == "n/a (too few: 10 images with findings)"
    assert ap_strict["numerator"] == 3 and strict["attributes"]["view_position"]["underdiagnosis_gap"]["gap"] is None


def test_tpr_fpr_by_hand_and_small_groups_are_explicit():
    rng = np.random.default_rng(3)
    n = 130
    targets = np.zeros((n, len(LABELS)), dtype=int)
    targets[:40, LABEL2ID["Mass"]] = 1
    targets[:3, LABEL2ID["Hernia"]] = 1  # 3 positives: no AUC
    probabilities = rng.random((n, len(LABELS))) * 0.4  # everything below 0.5 ...
    probabilities[:30, LABEL2ID["Mass"]] = 0.7  # ... except 30 of the 40 Mass positives
    probabilities[40:50, LABEL2ID["Mass"]] = 0.9  # and 10 of the 90 Mass negatives
    sex = np.array(["F"] * 120 + ["M"] * 10)  # 10 men: counts only
    report = subgroup_report(probabilities, targets, HALF, np.arange(n), sex=sex, n_bootstrap=50)
    women = report["attributes"]["sex"]["groups"]["F"]
    assert women["labels"]["Mass"]["tpr"] == {"value": 0.75, "numerator": 30, "denominator": 40, "note": None}
    assert women["labels"]["Mass"]["fpr"] == {"value": 10 / 80, "numerator": 10, "denominator": 80, "note": None}
    hernia = women["labels"]["Hernia"]
    assert hernia["auc"]["value"] is None and hernia["auc"]["note"] == "n/a (too few: 3 positives)"
    assert hernia["tpr"]["value"] is None and hernia["tpr"]["note"] == "n/a (too few: 3 positives)"
    assert women["labels"]["Pneumonia"]["auc"]["note"] == "n/a (too few: 0 positives)"
    assert women["auc_macro"]["findings"] == ["Mass"]  # the only finding with 10 positives and 10 negatives
    assert women["auc_macro"]["value"] == women["labels"]["Mass"]["auc"]["value"]
    men = report["attributes"]["sex"]["groups"]["M"]
    assert not men["evaluated"] and men["note"] == "counts only: 10 images (< 50)"
    assert men["n_images"] == 10 and men["labels"]["Mass"]["positives"] == 0
    assert men["auc_macro"]["value"] is None and men["labels"]["Mass"]["tpr"]["value"] is None
    assert report["attributes"]["sex"]["gaps"]["Mass"]["tpr"]["gap"] is None  # one evaluated group only
    markdown = subgroup_markdown(report)
    assert "| M | 10 | 10 | counts only: 10 images (< 50) |" in markdown
    assert "n/a (too few: 3 positives)" in markdown and "0.750 / 0.125" in markdown


def test_real_metadata_of_the_mini_set(tmp_path):
    frame = read_labels_csv(MINI_CSV)
    targets = multi_hot_matrix(frame).astype(int)
    probabilities = np.random.default_rng(0).random(targets.shape)
    thresholds = {label: 0.5 for label in LABELS}
    report = subgroup_report(
        probabilities,
        targets,
        thresholds,
        frame["patient_id"].to_numpy(),
        sex=frame["sex"],
        age=frame["age"],
        view_position=frame["view_position"],
        n_bootstrap=50,
    )
    json.dumps(report, allow_nan=False)
    for attribute in ("sex", "age", "view_position"):
        section = report["attributes"][attribute]
        assert sum(group["n_images"] for group in section["groups"].values()) + section["unassigned"] == len(frame)
    age = report["attributes"]["age"]["groups"]
    assert age["0-17"]["n_images"] == 0 and age["0-17"]["note"] == "counts only: 0 images (< 50)"
    assert age["18-39"]["n_images"] == 39 and not age["18-39"]["evaluated"]
    # 62 images: evaluated, but no finding has 10 positives, so there is no macro, and it says why.
    assert age["80+"]["evaluated"] and age["80+"]["n_images"] == 62
    assert age["80+"]["auc_macro"]["value"] is None and age["80+"]["auc_macro"]["findings"] == []
    assert age["80+"]["auc_macro"]["note"] == "n/a (no finding has 10 positives and 10 negatives)"
    assert age["80+"]["underdiagnosis"]["denominator"] == 22 and age["80+"]["underdiagnosis"]["value"] is not None
    # The larger bands average the findings common enough in them, and the report says the sets differ.
    assert 0 < len(age["60-79"]["auc_macro"]["findings"]) < len(FINDINGS)
    assert report["attributes"]["age"]["macro_findings_differ"]
    sex = report["attributes"]["sex"]["groups"]
    assert sex["F"]["n_patients"] + sex["M"]["n_patients"] == frame["patient_id"].nunique()
    assert 0.4 < report["overall"]["auc_macro"]["value"] < 0.6  # random scores
    markdown = subgroup_markdown(report)
    assert "### Age (years)" in markdown and "### View position" in markdown
    path = tmp_path / "forest.png"
    plot_subgroup_forest(report, path)
    assert path.stat().st_size > 5_000


def test_input_checks():
    probabilities, targets, sex, patients = perfect_for_women(n=40)
    with pytest.raises(ValueError, match="thresholds lack"):
        subgroup_report(probabilities, targets, {"Mass": 0.5}, patients, sex=sex)
    with pytest.raises(ValueError, match="3 values for 40 images"):
        subgroup_report(probabilities, targets, HALF, patients, sex=sex[:3])
    with pytest.raises(ValueError, match="patient ids"):
        subgroup_report(probabilities, targets, HALF, patients[:5], sex=sex)
