"""ECE / Brier against hand-computed values, temperature scaling on synthetic logits, the rescaled head."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.calibration import calibration_curve

from cxr_vit.constants import LABELS, THRESHOLDS_KEY
from cxr_vit.evaluation.calibration import (
    CALIBRATION_KEY,
    TemperatureScaling,
    calibrate_model,
    calibrate_thresholds,
    calibrated_head,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    plot_reliability,
    reliability_bins,
)

N = 20_000
# Alternating over-confident (T > 1) and under-confident (T < 1) labels, one calibrated.
T_TRUE = np.array([2.5, 0.6] * 7 + [1.0])


def synthetic(seed: int, temperature: np.ndarray, shift: float = 0.0, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels ~ Bernoulli(sigmoid(z / T + shift)): the model's z is miscalibrated by T and shift."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(-1.0, 2.5, size=(n, len(LABELS)))
    targets = (rng.random(logits.shape) < expit(logits / temperature + shift)).astype(np.float64)
    return logits, targets


def mean_ece(probabilities: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean([expected_calibration_error(probabilities[:, i], targets[:, i]) for i in range(len(LABELS))]))


# ---- metrics -----------------------------------------------------------------------------------------


def test_ece_and_brier_by_hand():
    p = np.array([0.1, 0.15, 0.5, 0.9, 0.95, 0.85])
    y = np.array([0, 1, 1, 1, 1, 0])
    # 5 bins: (0, .2] holds .1, .15 (freq .5, mean .125); (.4, .6] holds .5 (1 vs .5); (.8, 1] holds the rest
    # (freq 2/3, mean .9). ECE = (2 * .375 + 1 * .5 + 3 * (.9 - 2/3)) / 6 = 0.325.
    assert expected_calibration_error(p, y, n_bins=5) == pytest.approx(0.325)
    report = calibration_report(np.tile(p[:, None], (1, len(LABELS))), np.tile(y[:, None], (1, len(LABELS))))
    brier = (0.1**2 + 0.85**2 + 0.5**2 + 0.1**2 + 0.05**2 + 0.85**2) / 6
    assert report["labels"]["Mass"]["brier"] == pytest.approx(brier)
    assert report["brier_macro"] == pytest.approx(brier)
    # With 15 bins (width 1/15) every probability has a bin of its own: ECE = mean |y - p|.
    expected_15 = (0.1 + 0.85 + 0.5 + 0.1 + 0.05 + 0.85) / 6
    assert report["labels"]["Mass"]["ece"] == pytest.approx(expected_15)
    assert report["n_bins"] == 15 and "15 equal-width bins" in report["binning"]


def test_bin_edges_follow_sklearn():
    # A probability on an inner edge belongs to the lower bin, 0 to the first, 1 to the last.
    bins = reliability_bins(np.array([0.0, 0.2, 0.2000001, 1.0]), np.array([0, 1, 0, 1]), n_bins=5)
    assert bins["count"] == [2, 1, 0, 0, 1]
    assert bins["mean_predicted"][2] is None and bins["observed_frequency"][0] == 0.5
    rng = np.random.default_rng(1)
    p, y = rng.random(500), rng.integers(0, 2, 500)
    mine = reliability_bins(p, y)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=15, strategy="uniform")
    np.testing.assert_allclose([v for v in mine["observed_frequency"] if v is not None], prob_true)
    np.testing.assert_allclose([v for v in mine["mean_predicted"] if v is not None], prob_pred)


def test_report_is_json_safe_and_plot_is_written(tmp_path):
    logits, targets = synthetic(2, T_TRUE, n=400)
    targets[:, LABELS.index("Hernia")] = 0  # a label without positives still reports
    report = calibration_report(expit(logits), targets)
    assert list(report["labels"]) == list(LABELS)
    assert sum(report["labels"]["Mass"]["bins"]["count"]) == 400
    json.dumps(report, allow_nan=False)
    scaling = fit_temperature(logits, targets)
    path = tmp_path / "reliability.png"
    plot_reliability(expit(logits), targets, path, calibrated=scaling.probabilities(logits))
    assert path.stat().st_size > 10_000


# ---- temperature scaling -----------------------------------------------------------------------------


def test_recovers_known_temperatures_and_lowers_ece():
    logits, targets = synthetic(3, T_TRUE)
    scaling = fit_temperature(logits, targets)
    assert scaling.fitted.all() and not scaling.with_bias and (scaling.bias == 0).all()
    np.testing.assert_allclose(scaling.temperature, T_TRUE, rtol=0.06)  # each label, sampling noise at n = 20,000
    for value in (2.5, 0.6):  # and on average over the seven labels sharing a temperature
        assert scaling.temperature[T_TRUE == value].mean() == pytest.approx(value, rel=0.02)
    assert (scaling.nll_after <= scaling.nll_before + 1e-12).all()
    # On a fresh sample of the same distribution (the evaluated split), ECE drops.
    test_logits, test_targets = synthetic(4, T_TRUE)
    before, after = (
        mean_ece(expit(test_logits), test_targets),
        mean_ece(scaling.probabilities(test_logits), test_targets),
    )
    assert before > 0.08 and after < 0.015


def test_bias_matters_for_a_shift_not_for_a_scale():
    """Should temperature scaling fit a bias too? Only when the logits are shifted, e.g. by pos_weight training.

    A pure scale (T): T alone recovers it and the bias stays ~0 with the same validation BCE. A shift: BCE with
    ``pos_weight = w`` moves the optimal logit by +log(w) (prevalence 5%: w = 19, +2.94). Then T alone cannot
    undo it (ECE stays high) and T + b recovers both T and b = -log(w).
    """
    logits, targets = synthetic(5, T_TRUE)
    only_t, with_b = fit_temperature(logits, targets), fit_temperature(logits, targets, bias=True)
    assert np.abs(with_b.bias).max() < 0.1
    np.testing.assert_allclose(with_b.temperature, only_t.temperature, rtol=0.03)
    np.testing.assert_allclose(with_b.nll_after, only_t.nll_after, atol=2e-4)

    shift = -np.log(19.0)
    logits, targets = synthetic(6, T_TRUE, shift=shift)
    only_t, with_b = fit_temperature(logits, targets), fit_temperature(logits, targets, bias=True)
    np.testing.assert_allclose(with_b.bias, shift, atol=0.15)
    np.testing.assert_allclose(with_b.temperature, T_TRUE, rtol=0.12)  # fewer positives: noisier than above
    for value in (2.5, 0.6):
        assert with_b.temperature[T_TRUE == value].mean() == pytest.approx(value, rel=0.04)
    test_logits, test_targets = synthetic(7, T_TRUE, shift=shift)
    ece_t = mean_ece(only_t.probabilities(test_logits), test_targets)
    ece_tb = mean_ece(with_b.probabilities(test_logits), test_targets)
    assert ece_tb < 0.015 < 0.05 < ece_t
    assert (with_b.nll_after < only_t.nll_after - 0.01).all()


def test_one_class_label_is_left_unscaled():
    logits, targets = synthetic(8, T_TRUE, n=2000)
    hernia = LABELS.index("Hernia")
    targets[:, hernia] = 0
    scaling = fit_temperature(logits, targets, bias=True)
    assert not scaling.fitted[hernia] and scaling.temperature[hernia] == 1.0 and scaling.bias[hernia] == 0.0
    record = scaling.to_dict()
    json.dumps(record, allow_nan=False)
    assert record["labels"]["Hernia"]["fitted"] is False and record["with_bias"] is True
    with pytest.raises(ValueError, match="must both be"):
        fit_temperature(logits[:, :3], targets[:, :3])


def test_logits_from_probabilities_round_trip_and_saturation():
    logits = np.array([[-3.0, 0.0, 4.0]])
    np.testing.assert_allclose(logits_from_probabilities(expit(logits)), logits)
    assert np.isfinite(logits_from_probabilities(np.array([0.0, 1.0]))).all()


def test_thresholds_keep_their_decisions():
    rng = np.random.default_rng(9)
    scaling = TemperatureScaling(
        temperature=rng.uniform(0.5, 3.0, len(LABELS)),
        bias=rng.normal(0, 1, len(LABELS)),
        fitted=np.ones(len(LABELS), dtype=bool),
        with_bias=True,
        nll_before=np.zeros(len(LABELS)),
        nll_after=np.zeros(len(LABELS)),
    )
    thresholds = dict(zip(LABELS, rng.uniform(0.05, 0.6, len(LABELS)), strict=True))
    moved = calibrate_thresholds(thresholds, scaling)
    logits = rng.normal(-1, 3, size=(5000, len(LABELS)))
    before = expit(logits) >= np.array([thresholds[label] for label in LABELS])
    after = scaling.probabilities(logits) >= np.array([moved[label] for label in LABELS])
    assert (before == after).mean() > 0.9999  # equal up to float rounding at the boundary
    extremes = calibrate_thresholds({"Mass": 0.0, "Nodule": 1.0 + 1e-6, "Hernia": -0.5}, scaling)
    assert extremes == {"Mass": 0.0, "Nodule": 1.0 + 1e-6, "Hernia": -0.5}  # always / never: kept, never NaN


# ---- the rescaled model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    from cxr_vit.modeling import create_model

    torch.manual_seed(0)
    return create_model("vit_tiny_patch16_224", pretrained=False, image_size=64, model_kwargs={"depth": 2}).eval()


def scaling_for_test() -> TemperatureScaling:
    temperature = np.linspace(0.5, 3.0, len(LABELS))
    return TemperatureScaling(
        temperature=temperature,
        bias=np.linspace(-1.0, 1.0, len(LABELS)),
        fitted=np.ones(len(LABELS), dtype=bool),
        with_bias=True,
        nll_before=np.full(len(LABELS), np.nan),
        nll_after=np.full(len(LABELS), np.nan),
    )


def scaled_by_hand(logits: torch.Tensor, scaling: TemperatureScaling) -> torch.Tensor:
    """``z / T + b`` in float32, what a calibrated head must compute."""
    temperature = torch.as_tensor(scaling.temperature, dtype=torch.float32)
    return logits / temperature + torch.as_tensor(scaling.bias, dtype=torch.float32)


def test_calibrated_head_is_pure():
    weight, bias = torch.randn(len(LABELS), 8), torch.randn(len(LABELS))
    saved = weight.clone(), bias.clone()
    scaling = scaling_for_test()
    new_weight, new_bias = calibrated_head(weight, bias, scaling)
    torch.testing.assert_close((weight, bias), saved)
    temperature = torch.as_tensor(scaling.temperature, dtype=torch.float32)
    torch.testing.assert_close(new_weight, weight / temperature[:, None])
    torch.testing.assert_close(new_bias, bias / temperature + torch.as_tensor(scaling.bias, dtype=torch.float32))


def test_calibrated_model_logits_and_stock_reload(tiny_model, tmp_path):
    from transformers import AutoModelForImageClassification

    from cxr_vit.modeling import save_model

    model = copy.deepcopy(tiny_model)
    thresholds = {label: 0.3 for label in LABELS}
    setattr(model.config, THRESHOLDS_KEY, thresholds)
    original_state = {key: value.clone() for key, value in model.state_dict().items()}
    scaling = scaling_for_test()
    calibrated = calibrate_model(model, scaling).eval()

    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        original, rescaled = model(pixel_values=pixels).logits, calibrated(pixel_values=pixels).logits
    torch.testing.assert_close(rescaled, scaled_by_hand(original, scaling))
    torch.testing.assert_close(model.state_dict(), original_state)  # the input model is untouched
    assert getattr(model.config, THRESHOLDS_KEY) == thresholds and not hasattr(model.config, CALIBRATION_KEY)

    moved = getattr(calibrated.config, THRESHOLDS_KEY)
    assert moved == calibrate_thresholds(thresholds, scaling)
    assert getattr(calibrated.config, CALIBRATION_KEY)["thresholds_rescaled"] is True

    save_model(calibrated, tmp_path / "calibrated")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "calibrated").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, rescaled)
    stored = getattr(reloaded.config, CALIBRATION_KEY)["labels"]["Mass"]
    assert stored["temperature"] == pytest.approx(scaling.temperature[LABELS.index("Mass")])


def test_bias_free_head_gains_a_bias(tiny_model):
    model = copy.deepcopy(tiny_model)
    model.timm_model.head = torch.nn.Linear(model.timm_model.head.in_features, len(LABELS), bias=False)
    scaling = scaling_for_test()
    calibrated = calibrate_model(model, scaling).eval()
    assert model.timm_model.head.bias is None and calibrated.timm_model.head.bias is not None
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        original, rescaled = model(pixel_values=pixels).logits, calibrated(pixel_values=pixels).logits
    torch.testing.assert_close(rescaled, scaled_by_hand(original, scaling))


def test_wrong_head_is_refused(tiny_model):
    model = copy.deepcopy(tiny_model)
    model.timm_model.head = torch.nn.Linear(model.timm_model.head.in_features, 3)
    with pytest.raises(ValueError, match="Linear head with 15 outputs"):
        calibrate_model(model, scaling_for_test())


def test_a_perfectly_separated_label_is_left_unscaled():
    """No finite temperature maximises the likelihood of separated classes (it grows as T -> 0): flag, do not fit."""
    logits, targets = synthetic(10, T_TRUE, n=400)
    mass = LABELS.index("Mass")
    targets[:, mass] = (logits[:, mass] > 0.5).astype(float)
    scaling = fit_temperature(logits, targets, bias=True)
    assert not scaling.fitted[mass] and scaling.temperature[mass] == 1.0 and scaling.bias[mass] == 0.0
    assert "separates it perfectly" in scaling.to_dict()["labels"]["Mass"]["not_fitted_because"]
    assert TemperatureScaling.from_dict(scaling.to_dict()).skipped == scaling.skipped
    assert scaling.fitted.sum() == len(LABELS) - 1


def test_uncalibrated_model_folds_the_scaling_back_out(tiny_model):
    from cxr_vit.evaluation.calibration import uncalibrated_model

    calibrated = calibrate_model(tiny_model, scaling_for_test()).eval()
    original = uncalibrated_model(calibrated).eval()
    assert not hasattr(original.config, CALIBRATION_KEY) and hasattr(calibrated.config, CALIBRATION_KEY)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(original(pixel_values=pixels).logits, tiny_model(pixel_values=pixels).logits)
    with pytest.raises(ValueError, match="not temperature-scaled"):
        uncalibrated_model(tiny_model)
