"""scripts/calibrate.py: a new, temperature-scaled model folder that stock clients read as calibrated, the original
untouched, and evaluate.py on it recovering the uncalibrated probabilities exactly (ECE before and after)."""

import json

import datasets
import numpy as np
import pytest
import timm
import torch
from conftest import REPO, TEST_DATA
from hub_server import HubServer, point_hf_clients_at
from inference_helpers import load_script, only_positive, save_tiny_model
from PIL import Image
from scipy.special import expit, logit
from transformers import AutoModelForImageClassification, pipeline

from cxr_vit.constants import LABELS, THRESHOLDS_KEY
from cxr_vit.evaluation.calibration import CALIBRATION_KEY, calibration_report, fit_calibration
from cxr_vit.hub import push_model
from cxr_vit.inference import Classifier
from cxr_vit.prediction import load_model
from cxr_vit.public_names import dataset_reference

calibrate_script = load_script(REPO / "scripts" / "calibrate.py")
evaluate_script = load_script(REPO / "scripts" / "evaluate.py")
XRAY = TEST_DATA / "00000017_000.png"


def folder_bytes(folder) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def calibrated(prepared_mini, tmp_path_factory):
    """(original folder, its bytes before, calibrated folder, T, b) from one calibrate.py run with --bias always."""
    root = tmp_path_factory.mktemp("calibrate")
    original = save_tiny_model(root / "original", thresholds=only_positive("Effusion"))
    (original / "test_results.json").write_text(json.dumps({"test_auc_macro": 0.5, "test_samples": 137}))
    before = folder_bytes(original)
    output = root / "calibrated"
    args = ["--model", str(original), "--dataset_name", str(prepared_mini), "--output_dir", str(output)]
    assert calibrate_script.main([*args, "--bias", "always"]) == 0
    record = json.loads((output / "config.json").read_text())[CALIBRATION_KEY]
    temperature = np.array([record["labels"][label]["temperature"] for label in LABELS])
    bias = np.array([record["labels"][label]["bias"] for label in LABELS])
    return original, before, output, temperature, bias


def test_the_original_folder_is_not_modified(calibrated):
    original, before, *_ = calibrated
    assert folder_bytes(original) == before


def test_config_and_card_record_the_temperatures_and_where_they_were_fitted(calibrated, prepared_mini):
    original, _, output, temperature, bias = calibrated
    config = json.loads((output / "config.json").read_text())
    record = config[CALIBRATION_KEY]
    assert record["fitted_on"] == {  # names, not local paths: config.json is published
        "model": original.name,
        "dataset": dataset_reference(str(prepared_mini)).name,
        "split": "validation",
        "images": datasets.load_dataset(str(prepared_mini), split="validation").num_rows,
        "precision": Classifier(load_model(original), device="cpu").runtime,  # --precision auto on this CPU
    }
    assert record["with_bias"] and record["bias_rule"].startswith("always")
    assert np.all(temperature > 0) and np.any(bias != 0)
    # The stored thresholds moved to the calibrated scale: the same decisions. "Always" (0) and "never" (above 1)
    # stay as they are: their logits are infinite or undefined, and a NaN threshold would never decide anything.
    assert config[THRESHOLDS_KEY] == only_positive("Effusion")
    assert (output / "test_results.json").is_file()  # the training record travels with the weights
    card = (output / "README.md").read_text()
    assert "## Calibration" in card and "Fitted on: dataset" in card and f"| Mass | {temperature[9]:.4f} |" in card


def test_stock_clients_return_the_calibrated_probabilities(calibrated, tmp_path, monkeypatch):
    original, _, output, temperature, bias = calibrated
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = AutoModelForImageClassification.from_pretrained(original).eval()(pixel_values=pixels).logits
        after = AutoModelForImageClassification.from_pretrained(output).eval()(pixel_values=pixels).logits
    np.testing.assert_allclose(after.numpy(), before.numpy() / temperature + bias, rtol=1e-5, atol=1e-5)

    classifier = pipeline("image-classification", model=str(output), device="cpu")
    scores = {s["label"]: s["score"] for s in classifier(str(XRAY), top_k=15)}
    inputs = classifier.image_processor(Image.open(XRAY).convert("RGB"))
    with torch.no_grad():
        logits = AutoModelForImageClassification.from_pretrained(original).eval()(**inputs).logits[0].numpy()
    expected = expit(logits / temperature + bias)
    np.testing.assert_allclose([scores[label] for label in LABELS], expected, rtol=1e-4, atol=1e-6)

    with HubServer(tmp_path / "hub") as hub:
        point_hf_clients_at(hub.endpoint, monkeypatch, token=hub.token, cache_dir=tmp_path / "hf-home")
        push_model(output, "test-user/cxr-calibrated")
        from_timm = timm.create_model("hf-hub:test-user/cxr-calibrated", pretrained=True).eval()
        with torch.no_grad():
            np.testing.assert_allclose(from_timm(pixels).numpy(), after.numpy(), rtol=1e-5, atol=1e-6)


def test_evaluate_reports_ece_before_and_after_from_the_recorded_scaling(calibrated, prepared_mini, capsys):
    """The calibrated model's report recovers the original model's probabilities (its head with T and b folded
    back out: W T, (b' - b) T) and so the original's ECE, and puts the calibrated ECE beside it."""
    original, _, output, *_ = calibrated
    args = ["--model", str(output), "--dataset_name", str(prepared_mini), "--output_dir", str(output / "evaluation")]
    assert evaluate_script.main([*args, "--n_bootstrap", "5"]) == 0
    assert "before temperature scaling" in capsys.readouterr().out
    report = json.loads((output / "evaluation" / "report.json").read_text())
    test = datasets.load_dataset(str(prepared_mini), split="test")
    probabilities, targets = Classifier(load_model(original), device="cpu").predict_dataset(test, progress=False)
    expected = calibration_report(probabilities, targets)
    before, after = report["calibration"]["uncalibrated"], report["calibration"]["model"]
    # The original head, folded back out of the calibrated one, predicts the same up to the float32 storage of the
    # calibrated bias (b0 / T + b: at T = 148 and |b| = 3 its rounding moves b0 by ~1e-4, a probability by ~1e-5).
    for label in LABELS:
        assert before["labels"][label]["ece"] == pytest.approx(expected["labels"][label]["ece"], abs=2e-5), label
    assert after["ece_macro"] < before["ece_macro"]  # fitted on validation, measured on test
    markdown = (output / "evaluation" / "report.md").read_text()
    assert "before temperature scaling" in markdown and "| Label " in markdown and "ECE before" in markdown


def test_refusals(calibrated, prepared_mini, tmp_path, capsys):
    original, _, output, *_ = calibrated
    base = ["--dataset_name", str(prepared_mini)]
    assert calibrate_script.main(["--model", str(original), *base, "--output_dir", str(original)]) == 2
    assert "is the model's folder" in capsys.readouterr().err
    assert calibrate_script.main(["--model", str(original), *base, "--output_dir", str(output)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert calibrate_script.main(["--model", str(output), *base, "--output_dir", str(tmp_path / "again")]) == 2
    assert "already temperature-scaled" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_the_bias_rule_keeps_b_for_a_shift_and_drops_it_for_noise():
    """Akaike's rule on synthetic logits: labels ~ Bernoulli(sigmoid(z / 2 + shift)). Without a shift the bias
    buys noise (dropped); with pos_weight's shift (-log 19) it buys hundreds of nats (kept)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(-1.0, 2.5, size=(5000, len(LABELS)))
    for shift, kept in ((0.0, False), (-np.log(19.0), True)):
        targets = (rng.random(logits.shape) < expit(logits / 2.0 + shift)).astype(float)
        scaling = fit_calibration(logits, targets, bias="auto")
        assert scaling.with_bias is kept and ("kept" if kept else "dropped") in scaling.bias_rule
        assert scaling.temperature.mean() == pytest.approx(2.0, rel=0.05)
    assert not fit_calibration(logits, targets, bias="never").with_bias
    with pytest.raises(ValueError, match="bias must be one of"):
        fit_calibration(logits, targets, bias="sometimes")
    assert np.allclose(logit(expit(1.5)), 1.5)
