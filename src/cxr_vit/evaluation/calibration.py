"""Per-label calibration: ECE, Brier score, reliability diagrams, and temperature scaling baked into the head.

AUC says nothing about whether a predicted 0.3 means "3 in 10": a report that quotes probabilities needs
calibration metrics next to discrimination.

* ECE (Guo et al. 2017) per label: ``sum_b n_b / n * |observed frequency_b - mean predicted_b|`` over
  **15 equal-width bins on [0, 1]**; bin i holds probabilities in (i/15, (i+1)/15], the first also 0 (the rule of
  sklearn's ``calibration_curve(strategy="uniform")``, so the diagram's points are sklearn's). Empty bins weigh 0.
  ECE depends on the binning, so the report states it.
* Brier score: sklearn's ``brier_score_loss`` per label.
* Temperature scaling (Guo et al. 2017), per label because the 15 outputs are independent sigmoids: fit
  ``sigmoid(logit / T)``, optionally ``sigmoid(logit / T + b)``, by minimising the binary cross-entropy on the
  *validation* logits. The optimiser is scipy's L-BFGS-B on (log T, b) with the exact gradient, log T bounded to
  [-5, 5]; a label with one class in the validation split is left unscaled (T = 1, b = 0) and flagged, and so is
  a label the validation split separates perfectly (every positive's logit above every negative's): its likelihood
  grows without end as T -> 0, so no temperature can be estimated there, and the fit would only sharpen the outputs
  to 0 and 1 up to the bound.
  Dividing a logit by T > 0 and adding b is monotone, so AUCs do not change; thresholds chosen on the
  uncalibrated probabilities move to ``sigmoid(logit(t) / T + b)`` (:func:`calibrate_thresholds`).
* :func:`calibrate_model` folds T and b into the classifier (``W' = W / T`` row-wise, ``b' = b / T + bias``), so
  a stock ``from_pretrained`` + sigmoid returns calibrated probabilities with no extra code at inference. The
  config records T and b, so the uncalibrated logits come back exactly: ``z = (z_cal - b) * T``
  (:meth:`TemperatureScaling.inverse`).
* With or without b (:func:`fit_calibration`, ``bias="auto"``): T alone when the data say the logits are only
  too sharp or too flat, T and b when they are also shifted, as ``--pos_weight`` training shifts them (by
  ``+log(w)``; T cannot undo a shift, b can). The rule is Akaike's: b is kept when its one parameter per label
  lowers the summed validation negative log-likelihood by more than one nat per label (AIC = 2k - 2 log L). On
  an unshifted model the gain is sampling noise (about half a nat per label), so b is dropped and T alone, the
  smaller model, is fitted; on a shifted one the gain is orders of magnitude larger.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import expit, logit
from sklearn.metrics import brier_score_loss
from transformers import TimmWrapperForImageClassification

from ..constants import FINDINGS, LABELS, NUM_LABELS, THRESHOLDS_KEY
from ..metrics import finite_or_none

logger = logging.getLogger(__name__)

N_BINS = 15
LOG_TEMPERATURE_BOUNDS = (-5.0, 5.0)
# Extra config.json key of a calibrated model: what was folded into its head.
CALIBRATION_KEY = "cxr_vit_calibration"


def binning_rule(n_bins: int = N_BINS) -> str:
    return (
        f"{n_bins} equal-width bins on [0, 1]; bin i holds probabilities in (i/{n_bins}, (i+1)/{n_bins}], "
        "the first also 0 (sklearn calibration_curve, strategy='uniform')"
    )


# ---- metrics -----------------------------------------------------------------------------------------


def _bin_ids(probabilities: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], probabilities)  # the same call as sklearn's calibration_curve


def reliability_bins(probabilities: np.ndarray, targets: np.ndarray, n_bins: int = N_BINS) -> dict:
    """Per bin: count, mean predicted probability and observed frequency of one label (None for empty bins)."""
    probabilities, targets = np.asarray(probabilities, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    ids = _bin_ids(probabilities, n_bins)
    counts = np.bincount(ids, minlength=n_bins)
    predicted = np.bincount(ids, weights=probabilities, minlength=n_bins)
    observed = np.bincount(ids, weights=targets, minlength=n_bins)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "count": counts.astype(int).tolist(),
        "mean_predicted": [float(p / c) if c else None for p, c in zip(predicted, counts, strict=True)],
        "observed_frequency": [float(o / c) if c else None for o, c in zip(observed, counts, strict=True)],
    }


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE of one label over ``n_bins`` equal-width bins (see the module docstring for the bin edges)."""
    probabilities, targets = np.asarray(probabilities, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    if probabilities.size == 0:
        return math.nan
    ids = _bin_ids(probabilities, n_bins)
    counts = np.bincount(ids, minlength=n_bins)
    gaps = np.abs(np.bincount(ids, weights=targets - probabilities, minlength=n_bins))
    return float(gaps.sum() / counts.sum())  # sum_b n_b/n * |mean(y - p)_b| = sum_b |sum_b (y - p)| / n


def calibration_report(probabilities: np.ndarray, targets: np.ndarray, n_bins: int = N_BINS) -> dict:
    """Per label (canonical order): ECE, Brier score, positives and the reliability bins; macros over the findings.

    ``{"binning": str, "n_bins": int, "ece_macro": float, "brier_macro": float,
    "labels": {label: {"ece", "brier", "positives", "n", "bins": reliability_bins(...)}}}``.
    Macros average the 14 findings ("No Finding" is reported, not averaged), like the AUC macro. Each label is
    measured over the rows where it is known (NaN targets: missing); a label with none has NaN ECE and Brier and
    stays out of the macros.
    """
    probabilities, targets = np.asarray(probabilities, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    labels = {}
    for index, label in enumerate(LABELS):
        column, scores = known_column(probabilities, targets, index)
        labels[label] = {
            "ece": expected_calibration_error(scores, column, n_bins),
            "brier": float(brier_score_loss(column, scores, pos_label=1)) if column.size else math.nan,
            "positives": int(column.sum()),
            "n": int(column.size),
            "bins": reliability_bins(scores, column, n_bins),
        }
    return {
        "binning": binning_rule(n_bins),
        "n_bins": n_bins,
        "ece_macro": _finite_mean([labels[label]["ece"] for label in FINDINGS]),
        "brier_macro": _finite_mean([labels[label]["brier"] for label in FINDINGS]),
        "labels": labels,
    }


def known_column(values: np.ndarray, targets: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(targets, values) of label ``index`` on the rows where its target is known (not NaN)."""
    known = np.isfinite(targets[:, index])
    return targets[known, index], values[known, index]


def _finite_mean(values: list[float]) -> float:
    """Mean over the labels that have a value (a label no image annotates has none)."""
    finite = [value for value in values if np.isfinite(value)]
    return float(np.mean(finite)) if finite else math.nan


def plot_reliability(
    probabilities: np.ndarray,
    targets: np.ndarray,
    path: str | os.PathLike,
    n_bins: int = N_BINS,
    calibrated: np.ndarray | None = None,
) -> None:
    """Reliability diagrams, 15 panels in canonical order: observed frequency vs mean predicted probability per bin.

    Grey bars: images per bin (right axis, log scale), so a wild point on a handful of images reads as such.
    ``calibrated`` (optional, same shape): a second curve, e.g. after temperature scaling, in another colour.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    series = [("uncalibrated" if calibrated is not None else "model", probabilities, "tab:blue")]
    if calibrated is not None:
        series.append(("temperature-scaled", calibrated, "tab:orange"))
    centres = (np.arange(n_bins) + 0.5) / n_bins
    figure, axes = plt.subplots(3, 5, figsize=(20, 12.5))
    targets = np.asarray(targets, dtype=np.float64)
    for index, (axis, label) in enumerate(zip(axes.flat, LABELS, strict=True)):
        known = np.isfinite(targets[:, index])
        column = targets[known, index]
        if not column.size:
            axis.set_title(f"{label}\nnot annotated", fontsize=9)
            axis.axis("off")
            continue
        counts_axis = axis.twinx()
        counts_axis.set_yscale("log")
        counts_axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        counts_axis.yaxis.set_minor_formatter(NullFormatter())  # 2x10^0 ... labels crowd the neighbour panel
        counts_axis.set_ylabel("images per bin")
        axis.set_zorder(counts_axis.get_zorder() + 1)
        axis.patch.set_visible(False)
        axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        title = [label]
        for offset, (name, values, colour) in enumerate(series):
            scores = np.asarray(values)[known, index]
            bins = reliability_bins(scores, column, n_bins)
            counts = np.array(bins["count"])
            filled = counts > 0
            predicted = np.array([v for v in bins["mean_predicted"] if v is not None])
            observed = np.array([v for v in bins["observed_frequency"] if v is not None])
            axis.plot(predicted, observed, marker="o", markersize=3, color=colour, label=name)
            width = 1.0 / n_bins / len(series)
            counts_axis.bar(
                centres[filled] - 0.5 / n_bins + width * (offset + 0.5),
                counts[filled],
                width=width,
                color=colour,
                alpha=0.2,
            )
            ece = expected_calibration_error(scores, column, n_bins)
            brier = brier_score_loss(column, scores, pos_label=1)
            title.append(f"{name}: ECE {ece:.3f}, Brier {brier:.3f}")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("mean predicted probability")
        axis.set_ylabel("observed frequency")
        axis.set_title("\n".join(title) + f"\n{int(column.sum())} positives", fontsize=9)
        if index == 0:
            axis.legend(loc="upper left", fontsize=8)
    figure.suptitle(f"Reliability diagrams ({binning_rule(n_bins)})")
    # Fixed margins: tight_layout over 30 axes (15 panels and their count axes) took half of the plotting time.
    figure.subplots_adjust(left=0.035, right=0.96, bottom=0.05, top=0.9, wspace=0.45, hspace=0.62)
    figure.savefig(path, dpi=80)
    plt.close(figure)


# ---- temperature scaling -----------------------------------------------------------------------------


@dataclass
class TemperatureScaling:
    """Per-label ``T`` and ``b`` (``(15,)`` each): calibrated logit = logit / T + b."""

    temperature: np.ndarray
    bias: np.ndarray
    fitted: np.ndarray  # False where the validation split had one class or separated the label: T = 1, b = 0
    with_bias: bool
    nll_before: np.ndarray
    nll_after: np.ndarray
    bias_rule: str | None = None  # how with_bias was decided (fit_calibration)
    skipped: dict[str, str] = field(default_factory=dict)  # label -> why it was left unscaled

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated logits ``(n, 15)``."""
        return np.asarray(logits, dtype=np.float64) / self.temperature + self.bias

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(n, 15)``."""
        return expit(self.apply(logits))

    def inverse(self) -> TemperatureScaling:
        """The scaling that undoes this one: ``z = z_cal / (1 / T) + (-b T)``."""
        return TemperatureScaling(
            temperature=1.0 / self.temperature,
            bias=-self.bias * self.temperature,
            fitted=self.fitted,
            with_bias=self.with_bias,
            nll_before=self.nll_after,
            nll_after=self.nll_before,
        )

    @classmethod
    def from_dict(cls, record: dict) -> TemperatureScaling:
        """The scaling recorded by :meth:`to_dict` (e.g. a calibrated model's ``cxr_vit_calibration``)."""
        try:
            labels = record["labels"]
            entries = [labels[label] for label in LABELS]
            temperature = np.array([float(entry["temperature"]) for entry in entries])
            bias = np.array([float(entry["bias"]) for entry in entries])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a temperature-scaling record with T and b for all 15 labels ({err})") from None
        if not np.all(np.isfinite(temperature) & (temperature > 0)) or not np.all(np.isfinite(bias)):
            raise ValueError("a temperature-scaling record needs finite T > 0 and finite b for every label")
        return cls(
            temperature=temperature,
            bias=bias,
            fitted=np.array([bool(entry.get("fitted", True)) for entry in entries]),
            with_bias=bool(record.get("with_bias", bool(np.any(bias != 0)))),
            nll_before=np.array([_nan_if_none(entry.get("validation_bce_before")) for entry in entries]),
            nll_after=np.array([_nan_if_none(entry.get("validation_bce_after")) for entry in entries]),
            bias_rule=record.get("bias_rule"),
            skipped={
                label: entry["not_fitted_because"]
                for label, entry in zip(LABELS, entries, strict=True)
                if entry.get("not_fitted_because")
            },
        )

    def to_dict(self) -> dict:
        """JSON-safe: the method and, per label, T, b, whether it was fitted and the validation BCE before/after."""
        return {
            "method": "temperature scaling per label (Guo et al. 2017): sigmoid(logit / T"
            + (" + b)" if self.with_bias else ")")
            + ", fitted by minimising validation BCE (L-BFGS-B on log T"
            + (", b)" if self.with_bias else ")"),
            "with_bias": self.with_bias,
            **({"bias_rule": self.bias_rule} if self.bias_rule else {}),
            "labels": {
                label: {
                    "temperature": float(self.temperature[i]),
                    "bias": float(self.bias[i]),
                    "fitted": bool(self.fitted[i]),
                    **({"not_fitted_because": self.skipped[label]} if label in self.skipped else {}),
                    "validation_bce_before": finite_or_none(self.nll_before[i]),
                    "validation_bce_after": finite_or_none(self.nll_after[i]),
                }
                for i, label in enumerate(LABELS)
            },
        }


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def logits_from_probabilities(probabilities: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Logits back from sigmoid probabilities (clipped to [eps, 1 - eps]: float32 sigmoids saturate at 0 and 1).

    Prefer the model's raw logits where you have them; this is for saved probability files.
    """
    return logit(np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1.0 - eps))


def _bce(scores: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, scores) - targets * scores))


def _fit_label(logits: np.ndarray, targets: np.ndarray, with_bias: bool) -> tuple[float, float]:
    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        scaled = logits / math.exp(params[0])
        scores = scaled + (params[1] if with_bias else 0.0)
        residual = expit(scores) - targets  # d BCE / d score
        gradient = [float(np.mean(residual * -scaled))]  # d score / d log T = -logit / T
        if with_bias:
            gradient.append(float(np.mean(residual)))
        return _bce(scores, targets), np.array(gradient)

    start = np.zeros(2 if with_bias else 1)
    bounds = [LOG_TEMPERATURE_BOUNDS] + ([(None, None)] if with_bias else [])
    # Tight tolerances: the optimum must not depend on where it started (a model with 3x sharper logits gets 3x T).
    options = {"ftol": 1e-14, "gtol": 1e-10, "maxiter": 1000}
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds, options=options)
    if not result.success:
        logger.warning("temperature fit did not converge: %s", result.message)
    return math.exp(result.x[0]), float(result.x[1]) if with_bias else 0.0


def fit_temperature(logits: np.ndarray, targets: np.ndarray, bias: bool = False) -> TemperatureScaling:
    """Per-label temperature (and bias when ``bias``) minimising the BCE of ``sigmoid(logit / T + b)``.

    Give it the *validation* logits ``(n, 15)`` and targets; apply the result to the evaluated split.
    """
    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != NUM_LABELS or logits.shape != targets.shape:
        raise ValueError(f"logits and targets must both be (n, {NUM_LABELS}); got {logits.shape}, {targets.shape}")
    temperature, offset = np.ones(NUM_LABELS), np.zeros(NUM_LABELS)
    fitted = np.zeros(NUM_LABELS, dtype=bool)
    skipped = {}
    for index, label in enumerate(LABELS):
        column, scores = known_column(logits, targets, index)
        if not column.size:
            skipped[label] = "not annotated in the calibration split"
        elif column.min() == column.max():
            skipped[label] = "one class in the calibration split"
        elif scores[column == 0].max() < scores[column == 1].min():
            skipped[label] = "the calibration split separates it perfectly: no finite temperature fits"
        if label in skipped:
            logger.warning("%s: %s; left unscaled (T = 1, b = 0)", label, skipped[label])
            continue
        temperature[index], offset[index] = _fit_label(scores, column, bias)
        fitted[index] = True
    after = logits / temperature + offset
    return TemperatureScaling(
        temperature=temperature,
        bias=offset,
        fitted=fitted,
        with_bias=bias,
        nll_before=np.array([_bce(*known_column(logits, targets, i)[::-1]) for i in range(NUM_LABELS)]),
        nll_after=np.array([_bce(*known_column(after, targets, i)[::-1]) for i in range(NUM_LABELS)]),
        skipped=skipped,
    )


BIAS_CHOICES = ("auto", "always", "never")


def fit_calibration(logits: np.ndarray, targets: np.ndarray, bias: str = "auto") -> TemperatureScaling:
    """Per-label temperature scaling, with a bias ``always``, ``never``, or when Akaike's criterion keeps it (``auto``).

    ``auto`` fits both and keeps b when it lowers the validation negative log-likelihood, summed over images and
    the fitted labels, by more than one nat per fitted label (module docstring). The decision and its numbers are
    recorded in ``bias_rule``.
    """
    if bias not in BIAS_CHOICES:
        raise ValueError(f"bias must be one of {BIAS_CHOICES}, got {bias!r}")
    if bias == "never":
        scaling = fit_temperature(logits, targets)
        scaling.bias_rule = "never: temperature only, as asked"
        return scaling
    with_bias = fit_temperature(logits, targets, bias=True)
    if bias == "always":
        with_bias.bias_rule = "always: temperature and bias, as asked"
        return with_bias
    only_t = fit_temperature(logits, targets)
    fitted = with_bias.fitted
    gain = float(len(logits) * (only_t.nll_after[fitted] - with_bias.nll_after[fitted]).sum())
    count = int(fitted.sum())
    chosen = with_bias if gain > count else only_t
    verdict = "kept" if chosen is with_bias else "dropped"
    chosen.bias_rule = (
        f"auto (Akaike): a bias per label lowered the validation negative log-likelihood by {gain:.1f} nats over "
        f"{count} fitted labels; kept when above 1 nat per label: {verdict}"
    )
    return chosen


def calibrate_thresholds(thresholds: dict[str, float], scaling: TemperatureScaling) -> dict[str, float]:
    """Thresholds on the calibrated scale that make the same decisions: ``sigmoid(logit(t) / T + b)``.

    A threshold outside (0, 1) ("always positive" at <= 0, "never" above 1) means the same on every scale and is
    kept as it is (its logit would be infinite or NaN).
    """

    def moved(threshold: float, index: int) -> float:
        if not 0.0 < threshold < 1.0:
            return float(threshold)
        return float(expit(logit(threshold) / scaling.temperature[index] + scaling.bias[index]))

    return {label: moved(float(thresholds[label]), i) for i, label in enumerate(LABELS) if label in thresholds}


def calibrated_head(
    weight: torch.Tensor, bias: torch.Tensor | None, scaling: TemperatureScaling
) -> tuple[torch.Tensor, torch.Tensor]:
    """New ``(W', b')`` of a linear head: ``W / T`` row-wise and ``b / T + bias`` (inputs untouched)."""
    if weight.shape[0] != NUM_LABELS:
        raise ValueError(f"the head has {weight.shape[0]} outputs, the scaling {NUM_LABELS}")
    temperature = torch.as_tensor(scaling.temperature, dtype=torch.float64, device=weight.device)
    offset = torch.as_tensor(scaling.bias, dtype=torch.float64, device=weight.device)
    old_bias = bias.double() if bias is not None else torch.zeros_like(temperature)
    new_weight = weight.detach().double() / temperature[:, None]
    new_bias = old_bias.detach() / temperature + offset
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype)


def calibrate_model(
    model: TimmWrapperForImageClassification, scaling: TemperatureScaling, fitted_on: dict | None = None
) -> TimmWrapperForImageClassification:
    """A copy of ``model`` whose logits are ``original / T + b``: stock clients then get calibrated sigmoids.

    The input model is not modified. Thresholds stored in the config (``cxr_vit_thresholds``) are moved to the
    calibrated scale so every decision stays the same, and T, b are recorded under ``cxr_vit_calibration``, with
    ``fitted_on`` (where they were fitted: model, dataset, split, images) when given.
    """
    if getattr(model.config, CALIBRATION_KEY, None):
        raise ValueError(
            "the model is already temperature-scaled (its config has cxr_vit_calibration): calibrate the original "
            "model instead, so its record stays one T and b per label"
        )
    head = model.timm_model.get_classifier()
    if not isinstance(head, torch.nn.Linear) or head.out_features != NUM_LABELS:
        raise ValueError(f"calibrate_model needs a Linear head with {NUM_LABELS} outputs, got {head!r}")
    calibrated = copy.deepcopy(model)
    new_head = calibrated.timm_model.get_classifier()
    weight, bias = calibrated_head(head.weight, head.bias, scaling)
    if new_head.bias is None:  # a bias-free head needs one to carry b
        replacement = torch.nn.Linear(head.in_features, NUM_LABELS, bias=True, device=weight.device, dtype=weight.dtype)
        _replace_module(calibrated.timm_model, new_head, replacement)
        new_head = replacement
    with torch.no_grad():
        new_head.weight.copy_(weight)
        new_head.bias.copy_(bias)
    config = calibrated.config
    thresholds = getattr(config, THRESHOLDS_KEY, None)
    if thresholds:
        setattr(config, THRESHOLDS_KEY, calibrate_thresholds(thresholds, scaling))
    record = {**scaling.to_dict(), "thresholds_rescaled": bool(thresholds)}
    if fitted_on is not None:
        record["fitted_on"] = fitted_on
    setattr(config, CALIBRATION_KEY, record)
    return calibrated


def uncalibrated_model(model: TimmWrapperForImageClassification) -> TimmWrapperForImageClassification:
    """A copy of a model made by :func:`calibrate_model` with the scaling folded back out of its head (``W T``,
    ``(b' - b) T``): its logits are the original model's, up to float32 rounding of the head."""
    record = getattr(model.config, CALIBRATION_KEY, None)
    if not record:
        raise ValueError(f"the model's config has no {CALIBRATION_KEY}: it is not temperature-scaled")
    original = copy.deepcopy(model)
    head = original.timm_model.get_classifier()
    weight, bias = calibrated_head(head.weight, head.bias, TemperatureScaling.from_dict(record).inverse())
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    delattr(original.config, CALIBRATION_KEY)
    return original


def _replace_module(root: torch.nn.Module, old: torch.nn.Module, new: torch.nn.Module) -> None:
    for name, module in root.named_modules():
        if module is old:
            parent_name, _, attribute = name.rpartition(".")
            setattr(root.get_submodule(parent_name) if parent_name else root, attribute, new)
            return
    raise ValueError("classifier not found in the model")
