"""Evaluation: patient bootstrap CIs, validation-only thresholds, operating points, the report files."""

import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
from conftest import REPO
from inference_helpers import load_script, save_tiny_model
from PIL import Image
from transformers import AutoModelForImageClassification

import cxr_vit.evaluation as evaluation
from cxr_vit.constants import FINDINGS, LABELS, NO_FINDING, THRESHOLDS_KEY
from cxr_vit.evaluation import (
    bootstrap_distribution,
    bootstrap_report,
    choose_thresholds,
    evaluate_model,
    metric_table,
    operating_points,
    store_thresholds,
    threshold_config_entries,
    weighted_auc_ap,
)
from cxr_vit.inference import Classifier
from cxr_vit.metrics import multilabel_metrics
from cxr_vit.modeling import save_model
from cxr_vit.prediction import load_model, load_thresholds


def tile(column) -> np.ndarray:
    """The same column for all 15 labels."""
    return np.tile(np.asarray(column, dtype=float)[:, None], (1, len(LABELS)))


# ---- bootstrap ---------------------------------------------------------------------------------------


def test_patient_bootstrap_matches_the_hand_computed_distribution():
    """Two patients, each with one positive and one negative image.

    Patient A is ranked right (positive 0.9 > negative 0.1), B wrong (0.2 < 0.8). Drawing 2 patients with
    replacement gives {A, A} (p = 1/4): AUC 1, AP 1; {B, B} (1/4): AUC 0, AP 1/2; {A, B} (1/2): positives
    {0.9, 0.2} vs negatives {0.1, 0.8}, 3 of 4 pairs right, AUC 3/4, AP 1/2 * 1 + 1/2 * 2/3 = 5/6.
    Resampling images instead would also give one-class resamples and other values (e.g. AUC 1/2).
    """
    targets = tile([1, 0, 1, 0])
    scores = tile([0.9, 0.1, 0.2, 0.8])
    patients = ["A", "A", "B", "B"]
    samples = bootstrap_distribution(scores, targets, patients, n_bootstrap=4000, seed=1)
    auc, ap = samples[:, 0, 0], samples[:, 1, 0]
    assert set(np.round(auc, 9)) == {0.0, 0.75, 1.0}
    assert set(np.round(ap, 9)) == {0.5, round(5 / 6, 9), 1.0}
    for value, probability in [(1.0, 0.25), (0.75, 0.5), (0.0, 0.25)]:
        assert np.mean(np.isclose(auc, value)) == pytest.approx(probability, abs=0.03)
    report = bootstrap_report(scores, targets, patients, n_bootstrap=4000, seed=1)
    entry = report["labels"]["Atelectasis"]
    assert entry["auc"] == {"value": 0.75, "ci_low": 0.0, "ci_high": 1.0, "n_resamples": 4000}
    assert entry["auprc"]["value"] == pytest.approx(5 / 6)
    assert (entry["auprc"]["ci_low"], entry["auprc"]["ci_high"]) == (0.5, 1.0)
    assert report["auc_macro"]["value"] == pytest.approx(0.75)


def test_perfect_separation_gives_a_degenerate_interval():
    rng = np.random.default_rng(0)
    targets = (rng.random((60, 15)) < 0.4).astype(int)
    targets[:2], targets[2:4] = 1, 0  # each label has both classes
    scores = targets * 0.5 + 0.25 + rng.random((60, 15)) * 0.1  # every positive above every negative
    report = bootstrap_report(scores, targets, np.arange(60) // 3, n_bootstrap=200)
    for label in LABELS:
        entry = report["labels"][label]["auc"]
        assert (entry["value"], entry["ci_low"], entry["ci_high"]) == pytest.approx((1.0, 1.0, 1.0))
        assert entry["n_resamples"] > 150  # a few resamples may miss a label's positives


def test_one_class_resamples_are_left_out_and_counted():
    """Label 0 is positive only in patient C of 3: a resample without C (p = (2/3)^3 = 0.296) has no AUC."""
    targets = np.zeros((6, 15), dtype=int)
    targets[:, 1:] = [[1], [0], [1], [0], [1], [0]]  # every other label: both classes in every patient
    targets[4, 0] = 1  # patient C's first image
    scores = np.random.default_rng(0).random((6, 15))
    patients = ["A", "A", "B", "B", "C", "C"]
    report = bootstrap_report(scores, targets, patients, n_bootstrap=2000, seed=3)
    used = report["labels"]["Atelectasis"]["auc"]["n_resamples"]
    assert used / 2000 == pytest.approx(1 - (2 / 3) ** 3, abs=0.04)
    assert report["labels"]["Cardiomegaly"]["auc"]["n_resamples"] == 2000
    assert report["auc_macro"]["n_resamples"] == used  # the macro needs every finding in the resample


def test_fast_bootstrap_metrics_equal_sklearn_on_pooled_copies():
    """The vectorised weighted AUC/AP of a resample equals sklearn on copies of the drawn patients' images."""
    rng = np.random.default_rng(1)
    patients = rng.integers(0, 15, 80)
    targets = (rng.random((80, 15)) < 0.3).astype(int)
    scores = np.round(rng.random((80, 15)), 1)  # rounding makes ties, the delicate case
    draws = rng.integers(0, 15, (6, 15))
    weights = np.stack([np.bincount(drawn, minlength=15)[patients] for drawn in draws]).astype(float)
    for row, drawn in enumerate(draws):
        pooled = np.concatenate([np.flatnonzero(patients == p) for p in drawn])
        fast = np.array([weighted_auc_ap(scores[:, i], targets[:, i], weights[row : row + 1]) for i in range(15)])
        np.testing.assert_allclose(fast[:, :, 0].T, metric_table(scores[pooled], targets[pooled]), atol=1e-12)


def test_point_estimates_match_the_training_metrics():
    rng = np.random.default_rng(2)
    targets = (rng.random((120, 15)) < 0.2).astype(int)
    scores = rng.random((120, 15))
    report = bootstrap_report(scores, targets, np.arange(120) // 2, n_bootstrap=20)
    reference = multilabel_metrics(scores, targets)
    assert report["auc_macro"]["value"] == pytest.approx(reference["auc_macro"])
    for label in LABELS:
        assert report["labels"][label]["auc"]["value"] == pytest.approx(reference[f"auc_{label}"])


# ---- thresholds and operating points -----------------------------------------------------------------


def test_youden_threshold_by_hand():
    """Negatives 0.1 0.2 0.3 0.6, positives 0.4 0.7 0.8: at 0.4, sens 1 and spec 3/4 (J 0.75) beat 0.7 (J 2/3)."""
    scores = tile([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8])
    targets = tile([0, 0, 0, 0, 1, 1, 1]).astype(int)
    targets[:, LABELS.index("Hernia")] = 0  # one class only: no ROC curve, fallback
    thresholds = choose_thresholds(scores, targets)
    assert list(thresholds) == list(LABELS)
    assert thresholds["Atelectasis"] == pytest.approx(0.4)
    assert thresholds["Hernia"] == 0.5


def test_operating_points_by_hand():
    scores = tile([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8])
    targets = tile([0, 0, 0, 0, 1, 1, 1]).astype(int)
    thresholds = dict.fromkeys(LABELS, 0.5)  # positives: 0.6 (wrong), 0.7, 0.8 -> tp 2, fp 1, fn 1, tn 3
    points = operating_points(scores, targets, thresholds)["Effusion"]
    assert points == pytest.approx({"sensitivity": 2 / 3, "specificity": 3 / 4, "ppv": 2 / 3, "f1": 2 / 3})
    nothing = operating_points(scores, targets, dict.fromkeys(LABELS, 0.95))["Effusion"]
    assert np.isnan(nothing["ppv"]) and nothing["sensitivity"] == 0 and nothing["specificity"] == 1


def test_stored_thresholds_survive_a_stock_load(tmp_path):
    folder = save_tiny_model(tmp_path / "model")
    before = json.loads((folder / "config.json").read_text())
    thresholds = {label: round(0.1 + 0.05 * i, 2) for i, label in enumerate(LABELS)}
    store_thresholds(folder, threshold_config_entries(thresholds, {"rule": "test"}))
    after = json.loads((folder / "config.json").read_text())
    assert {k: v for k, v in after.items() if not k.startswith("cxr_vit_")} == before
    model = AutoModelForImageClassification.from_pretrained(folder)
    values, source = load_thresholds(model.config)
    np.testing.assert_allclose(values, [thresholds[label] for label in LABELS])
    assert "test" in source
    save_model(model, tmp_path / "copy")  # e.g. fine-tuning further: the keys travel with the config
    assert json.loads((tmp_path / "copy" / "config.json").read_text())[THRESHOLDS_KEY] == thresholds


# ---- the pipeline on the real mini set ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return load_model(save_tiny_model(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def mini_splits(prepared_mini):
    return datasets.load_dataset(str(prepared_mini))


def test_thresholds_are_chosen_on_validation_only(tiny_model, mini_splits, monkeypatch):
    validation, test = mini_splits["validation"], mini_splits["test"]
    seen = []
    original = evaluation.choose_thresholds
    monkeypatch.setattr(evaluation.report, "choose_thresholds", lambda p, t: seen.append((p, t)) or original(p, t))
    result = evaluate_model(tiny_model, test, validation, n_bootstrap=10)
    assert len(seen) == 1 and len(seen[0][1]) == validation.num_rows != test.num_rows
    val_probabilities, val_targets = Classifier(tiny_model, device="cpu").predict_dataset(validation)
    np.testing.assert_allclose(seen[0][0], val_probabilities, rtol=1e-5)
    np.testing.assert_array_equal(seen[0][1], val_targets)

    # Whatever the test split holds, the thresholds do not move ...
    flipped = test.map(lambda row: {"labels": [1.0 - x for x in row["labels"]]})
    assert evaluate_model(tiny_model, flipped, validation, n_bootstrap=10).thresholds == result.thresholds
    # ... but they do follow the validation split.
    assert evaluate_model(tiny_model, test, mini_splits["train"].select(range(150)), n_bootstrap=10).thresholds != (
        result.thresholds
    )


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_evaluate_script_writes_the_report_and_the_thresholds(prepared_mini, tmp_path):
    model = save_tiny_model(tmp_path / "model")
    untouched = {path.name: path.read_bytes() for path in model.iterdir()}
    out = tmp_path / "report"
    args = ["--model", str(model), "--dataset_name", str(prepared_mini), "--output_dir", str(out)]
    result = run("scripts/evaluate.py", *args, "--n_bootstrap", "40", "--batch_size", "50")
    assert result.returncode == 0, result.stderr
    assert "macro AUC (14 findings) on test" in result.stdout
    assert "evaluate: 100%" in result.stderr  # the progress bar over batches

    report = json.loads((out / "report.json").read_text())
    assert list(report["labels"]) == list(LABELS)  # canonical order
    assert report["num_images"] == datasets.load_dataset(str(prepared_mini), split="test").num_rows
    assert report["bootstrap"] == {"unit": "patient", "n_resamples": 40, "seed": 0, "confidence": 0.95}
    assert set(report["auc_macro"]) == {"value", "ci_low", "ci_high", "n_resamples"}
    assert report["no_finding"]["label"] == NO_FINDING
    entry = report["labels"]["Effusion"]
    assert {"positives", "auc", "auprc", "threshold", "sensitivity", "specificity", "ppv", "f1"} <= set(entry)
    assert entry["auc"]["ci_low"] <= entry["auc"]["value"] <= entry["auc"]["ci_high"]

    markdown = (out / "report.md").read_text()
    findings_table, no_finding_section = markdown.split(f"## {NO_FINDING}")
    positions = [findings_table.index(f"| {label} ") for label in FINDINGS]
    assert positions == sorted(positions)  # canonical order
    assert f"| {NO_FINDING} " not in findings_table and f"| {NO_FINDING} " in no_finding_section
    assert "Macro ROC-AUC over the 14 findings" in markdown and "Youden" in markdown
    for name in ("roc_curves.png", "pr_curves.png"):
        assert Image.open(out / name).size[0] >= 1000

    assert {path.name: path.read_bytes() for path in model.iterdir()} == untouched  # the model folder, by default
    written = json.loads((out / "thresholds.json").read_text())
    assert written["thresholds"] == report["thresholds"] and written["split"] == "validation"
    assert "predict.py --thresholds" in result.stdout

    # in this process: the script ran as a user runs it above; an interpreter start less (~8 CPU s)
    assert load_script(REPO / "scripts" / "evaluate.py").main([*args, "--n_bootstrap", "10", "--save_thresholds"]) == 0
    config = json.loads((model / "config.json").read_text())
    assert config[THRESHOLDS_KEY] == report["thresholds"]
    assert config["cxr_vit_thresholds_info"]["split"] == "validation"


def test_evaluate_script_names_bad_arguments(prepared_mini, tmp_path, capsys):
    main = load_script(REPO / "scripts" / "evaluate.py").main
    model = save_tiny_model(tmp_path / "model")
    missing = tmp_path / "no_such_dataset"
    assert main(["--model", str(model), "--dataset_name", str(missing), "--output_dir", str(tmp_path / "r")]) == 2
    assert str(missing) in capsys.readouterr().err
    args = ["--model", str(model), "--dataset_name", str(prepared_mini), "--output_dir", str(tmp_path / "r")]
    assert main([*args, "--split", "holdout"]) == 2
    assert "has no split 'holdout'" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "no_model"), *args[2:]]) == 2
    assert "no_model: no such model folder" in capsys.readouterr().err


def test_evaluate_script_with_a_hub_id_writes_config_to_output_dir(prepared_mini, tmp_path, monkeypatch, capsys):
    script = load_script(REPO / "scripts" / "evaluate.py")
    local = save_tiny_model(tmp_path / "model")
    stand_in = lambda name, backend: load_model(local, backend)  # noqa: E731 (the Hub download)
    monkeypatch.setattr(script, "load_model", stand_in)
    out = tmp_path / "report"
    args = ["--model", "you/cxr-vit", "--dataset_name", str(prepared_mini), "--output_dir", str(out)]
    assert script.main([*args, "--n_bootstrap", "5", "--save_thresholds"]) == 0
    assert "hf upload you/cxr-vit" in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert set(config[THRESHOLDS_KEY]) == set(LABELS) and config["model_type"] == "timm_wrapper"
    assert THRESHOLDS_KEY not in json.loads((local / "config.json").read_text())


def test_a_label_with_one_class_is_na_left_out_and_counted_everywhere():
    """One rule in every output: no AUC, not in the macro, counted (Trainer metrics) or n/a (report)."""
    from cxr_vit.evaluation import report_markdown

    rng = np.random.default_rng(5)
    targets = (rng.random((80, 15)) < 0.3).astype(int)
    targets[:, LABELS.index("Hernia")] = 0
    scores = rng.random((80, 15))
    trainer_metrics = multilabel_metrics(scores, targets)
    assert "auc_Hernia" not in trainer_metrics and trainer_metrics["num_labels_without_auc"] == 1
    report = bootstrap_report(scores, targets, np.arange(80) // 2, n_bootstrap=20)
    assert report["labels"]["Hernia"]["auc"]["value"] is None
    others = [trainer_metrics[f"auc_{label}"] for label in FINDINGS if label != "Hernia"]
    assert report["auc_macro"]["value"] == pytest.approx(np.mean(others)) == trainer_metrics["auc_macro"]
    entry = {"positives": 0, **report["labels"]["Hernia"], "threshold": 0.5}
    entry.update(sensitivity=None, specificity=1.0, ppv=None, f1=None)
    full = {
        "num_images": 80, "num_patients": 40, "num_validation_images": 10, "auc_macro": report["auc_macro"],
        "no_finding": {"label": NO_FINDING, **entry}, "labels": dict.fromkeys(LABELS, entry),
        "threshold_rule": "test", "bootstrap": {"n_resamples": 20, "seed": 0, "confidence": 0.95},
    }  # fmt: skip
    assert "| Hernia " in report_markdown(full) and "n/a" in report_markdown(full).split("| Hernia ")[1].split("\n")[0]


def test_evaluate_takes_an_ensemble_space_separated_or_repeated(tmp_path, capsys):
    """``--model A B`` (as most command lines take lists) and ``--model A --model B`` name the same ensemble."""
    main = load_script(REPO / "scripts" / "evaluate.py").main
    common = ["--dataset_name", str(tmp_path / "data"), "--output_dir", str(tmp_path / "r"), "--save_thresholds"]
    for models in (["--model", "a", "b"], ["--model", "a", "--model", "b"], ["--model", "a", "b", "--model", "c"]):
        with pytest.raises(SystemExit):  # refused only because an ensemble's thresholds are not one model's
            main([*models, *common])
        assert "thresholds chosen on averaged probabilities" in capsys.readouterr().err
