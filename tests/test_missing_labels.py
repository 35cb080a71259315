"""Missing labels (NaN: a source that does not annotate a label, or an uncertain one) are skipped by the loss and by
every metric: the masked BCE gives them no gradient, and each metric equals sklearn on the rows where the label is
known. A label with no known row is "not annotated", which is not "one class only"."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from cxr_vit.constants import FINDINGS, LABEL2ID, LABELS
from cxr_vit.evaluation import bootstrap_report, choose_thresholds, operating_points
from cxr_vit.evaluation.calibration import calibration_report, expected_calibration_error
from cxr_vit.evaluation.external import score_labels
from cxr_vit.evaluation.subgroups import group_metrics
from cxr_vit.metrics import NOT_ANNOTATED, ONE_CLASS, label_scores, masked_bce_with_logits, multilabel_metrics
from cxr_vit.training import positive_weights

HERNIA, EDEMA, MASS = LABEL2ID["Hernia"], LABEL2ID["Edema"], LABEL2ID["Mass"]


def scores_with_missing(rows: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(scores, targets) that carry signal; Hernia never known, Edema known but all negative, ~30% of the rest NaN."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((rows, 15)) < 0.3).astype(np.float64)
    scores = np.clip(0.3 * targets + 0.7 * rng.random((rows, 15)), 0, 1)
    targets[rng.random(targets.shape) < 0.3] = np.nan
    targets[:, HERNIA] = np.nan
    targets[:, EDEMA] = np.where(np.isnan(targets[:, EDEMA]), np.nan, 0.0)
    return scores, targets


def test_masked_bce_skips_missing_entries_and_gives_them_no_gradient():
    torch.manual_seed(0)
    logits = torch.randn(8, 15, requires_grad=True)
    targets = (torch.rand(8, 15) < 0.4).float()
    targets[torch.rand(8, 15) < 0.3] = float("nan")
    targets[:, HERNIA] = float("nan")
    weight = torch.linspace(1.0, 5.0, 15)
    loss = masked_bce_with_logits(logits, targets, weight)
    loss.backward()
    known = ~torch.isnan(targets)
    assert torch.all(logits.grad[~known] == 0) and torch.all(logits.grad[known] != 0)
    # the mean of the per-entry weighted BCE over the known entries only
    per_entry = F.binary_cross_entropy_with_logits(
        logits.detach(), torch.nan_to_num(targets), pos_weight=weight, reduction="none"
    )
    assert loss.item() == pytest.approx(per_entry[known].mean().item(), rel=1e-6)
    # with every entry known it is the stock loss, weighted or not
    full = (torch.rand(8, 15) < 0.4).float()
    for pos_weight in (None, weight):
        stock = F.binary_cross_entropy_with_logits(logits.detach(), full, pos_weight=pos_weight)
        assert masked_bce_with_logits(logits.detach(), full, pos_weight).item() == pytest.approx(stock.item(), rel=1e-6)
    assert masked_bce_with_logits(logits.detach(), torch.full((8, 15), float("nan"))).item() == 0.0


def test_positive_weights_count_only_known_entries():
    labels = np.array([[1.0, np.nan], [0.0, 1.0], [0.0, np.nan], [np.nan, 0.0]])
    labels = np.pad(labels, ((0, 0), (0, 13)))
    weights = positive_weights(labels)
    assert weights[0].item() == pytest.approx(2.0) and weights[1].item() == pytest.approx(1.0)


def test_label_scores_equal_sklearn_over_the_known_rows_and_name_why_a_label_has_none():
    scores, targets = scores_with_missing()
    result = label_scores(scores, targets)
    for index, label in enumerate(LABELS):
        known = ~np.isnan(targets[:, index])
        if label in ("Hernia", "Edema"):
            assert np.isnan(result.auc[index])
            continue
        assert result.auc[index] == pytest.approx(roc_auc_score(targets[known, index], scores[known, index]))
        assert result.auprc[index] == pytest.approx(
            average_precision_score(targets[known, index], scores[known, index])
        )
        assert result.known[index] == known.sum()
    assert result.reason("Hernia") == NOT_ANNOTATED and result.reason("Edema") == ONE_CLASS
    assert result.reason("Mass") is None
    assert result.labels_not_annotated == ["Hernia"] and result.labels_without_auc == ["Edema"]
    metrics = multilabel_metrics(scores, targets)
    assert metrics["num_labels_not_annotated"] == 1 and metrics["num_labels_without_auc"] == 1
    assert metrics["auc_macro"] == pytest.approx(np.nanmean([result.auc[LABEL2ID[label]] for label in FINDINGS]))


def test_bootstrap_thresholds_operating_points_and_calibration_skip_missing_labels():
    scores, targets = scores_with_missing()
    patients = np.arange(len(targets)) // 2
    report = bootstrap_report(scores, targets, patients, n_bootstrap=30)
    known = ~np.isnan(targets[:, MASS])
    mass = report["labels"]["Mass"]
    assert mass["auc"]["value"] == pytest.approx(roc_auc_score(targets[known, MASS], scores[known, MASS]))
    assert mass["auc"]["n_resamples"] == 30 and mass["auc"]["ci_low"] < mass["auc"]["ci_high"]
    assert report["labels"]["Hernia"]["auc"]["value"] is None
    assert report["labels"]["Hernia"]["reason"] == NOT_ANNOTATED
    assert report["labels"]["Edema"]["reason"] == ONE_CLASS
    assert "Hernia" not in report["macro_findings"] and "Edema" not in report["macro_findings"]
    assert len(report["macro_findings"]) == 12

    thresholds = choose_thresholds(scores, targets)
    assert thresholds["Mass"] == choose_thresholds(scores[known], np.nan_to_num(targets[known]))["Mass"]
    assert thresholds["Hernia"] == 0.5  # nothing to choose on
    points = operating_points(scores, targets, thresholds)
    called = scores[known, MASS] >= thresholds["Mass"]
    truth = targets[known, MASS] == 1
    assert points["Mass"]["sensitivity"] == pytest.approx(called[truth].mean())
    assert points["Mass"]["specificity"] == pytest.approx(1 - called[~truth].mean())

    calibration = calibration_report(scores, targets)
    assert calibration["labels"]["Mass"]["brier"] == pytest.approx(
        brier_score_loss(targets[known, MASS], scores[known, MASS])
    )
    assert calibration["labels"]["Mass"]["ece"] == pytest.approx(
        expected_calibration_error(scores[known, MASS], targets[known, MASS])
    )
    assert np.isnan(calibration["labels"]["Hernia"]["ece"]) and np.isfinite(calibration["ece_macro"])

    scored = score_labels(scores, targets, patients, thresholds, n_bootstrap=10)
    assert scored["labels"]["Mass"]["prevalence"] == pytest.approx(truth.mean())
    assert scored["labels"]["Hernia"]["known"] == 0 and scored["labels"]["Hernia"]["prevalence"] is None


def test_subgroup_counts_leave_missing_labels_out():
    scores, targets = scores_with_missing(rows=120)
    cut = np.full(15, 0.5)
    entry = group_metrics(scores, targets, cut, np.arange(120), n_bootstrap=10)
    known = ~np.isnan(targets[:, MASS])
    assert entry["labels"]["Mass"]["positives"] + entry["labels"]["Mass"]["negatives"] == known.sum()
    assert entry["labels"]["Hernia"]["positives"] == entry["labels"]["Hernia"]["negatives"] == 0
    assert entry["labels"]["Hernia"]["auc"]["value"] is None
    assert entry["labels"]["Mass"]["auc"]["value"] == pytest.approx(
        roc_auc_score(targets[known, MASS], scores[known, MASS])
    )


def test_the_trainer_loss_and_eval_bce_are_the_masked_ones(tmp_path):
    from training_helpers import ToyLinear, toy_args, toy_rows
    from transformers import EvalPrediction

    from cxr_vit.metrics import compute_metrics
    from cxr_vit.training import MultiLabelTrainer

    trainer = MultiLabelTrainer(model=ToyLinear(), args=toy_args(tmp_path), train_dataset=toy_rows(4))
    logits = torch.randn(6, 15)
    targets = (torch.rand(6, 15) < 0.5).float()
    targets[:, :4] = float("nan")
    assert torch.isfinite(trainer.loss(logits, targets))
    assert trainer.loss(logits, targets).item() == pytest.approx(masked_bce_with_logits(logits, targets).item())
    metrics = compute_metrics(EvalPrediction(predictions=logits.numpy(), label_ids=targets.numpy()))
    assert metrics["bce"] == pytest.approx(masked_bce_with_logits(logits.double(), targets.double()).item())


def test_each_bootstrap_resample_scores_a_label_over_its_known_rows():
    """A resample weighs each image by its patient's draws; a label's AUC there is sklearn's weighted AUC over the
    images where the label is known."""
    from cxr_vit.evaluation import bootstrap_distribution, patient_resamples

    scores, targets = scores_with_missing(rows=60, seed=3)
    patients = np.arange(60) // 3
    samples = bootstrap_distribution(scores, targets, patients, n_bootstrap=5, seed=7, chunk_size=5)
    (_, counts), = patient_resamples(20, 5, 7, 5)  # fmt: skip
    known = ~np.isnan(targets[:, MASS])
    for resample in range(5):
        weights = counts[resample, patients][known]
        expected = roc_auc_score(targets[known, MASS], scores[known, MASS], sample_weight=weights)
        assert samples[resample, 0, MASS] == pytest.approx(expected)
    assert np.isnan(samples[:, 0, HERNIA]).all()
