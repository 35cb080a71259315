import numpy as np
import pytest
from transformers import EvalPrediction

from cxr_vit.constants import FINDINGS, LABELS
from cxr_vit.metrics import compute_metrics, multilabel_metrics


def test_auc_against_hand_computed_values():
    # Label 0: positives score 0.9, 0.4; negatives 0.5, 0.1 -> 3 of 4 pairs ordered -> AUC 0.75.
    # Label 1: perfectly ranked -> 1.0. Label 2: perfectly reversed -> 0.0. Others: a tie -> 0.5.
    probabilities = np.full((4, 15), 0.5)
    targets = np.zeros((4, 15))
    targets[[0, 1], :] = 1
    probabilities[:, 0] = [0.9, 0.4, 0.5, 0.1]
    probabilities[:, 1] = [0.9, 0.8, 0.2, 0.1]
    probabilities[:, 2] = [0.1, 0.2, 0.8, 0.9]
    metrics = multilabel_metrics(probabilities, targets)
    assert metrics["auc_Atelectasis"] == pytest.approx(0.75)
    assert metrics["auc_Cardiomegaly"] == pytest.approx(1.0)
    assert metrics["auc_Consolidation"] == pytest.approx(0.0)
    assert metrics["auc_Edema"] == pytest.approx(0.5)
    assert all(f"auc_{label}" in metrics for label in LABELS)
    # 14 findings: 0.75 + 1 + 0 + 11 * 0.5 over 14; "No Finding" (0.5) joins only the 15-label mean.
    assert metrics["auc_macro"] == pytest.approx((0.75 + 1.0 + 0.0 + 11 * 0.5) / 14)
    assert metrics["auc_macro_15"] == pytest.approx((0.75 + 1.0 + 0.0 + 12 * 0.5) / 15)
    # AUPRC of label 1 (perfect) is 1; of label 0: precision at the ranks of its positives: 1/1 and 2/3.
    assert metrics["num_labels_without_auc"] == 0


def test_auprc_macro_over_findings():
    probabilities = np.tile(np.array([[0.9], [0.6], [0.4], [0.1]]), (1, 15))
    targets = np.tile(np.array([[1], [0], [1], [0]]), (1, 15))
    # Ranked: pos, neg, pos, neg -> AP = (1/1 + 2/3) / 2
    assert multilabel_metrics(probabilities, targets)["auprc_macro"] == pytest.approx((1 + 2 / 3) / 2)


def test_single_class_label_is_reported_missing_not_a_crash(caplog):
    rng = np.random.default_rng(0)
    targets = (rng.random((20, 15)) < 0.5).astype(float)
    targets[:, LABELS.index("Hernia")] = 0
    metrics = multilabel_metrics(rng.random((20, 15)), targets)
    assert "auc_Hernia" not in metrics
    assert metrics["num_labels_without_auc"] == 1
    expected = np.mean([metrics[f"auc_{label}"] for label in FINDINGS if label != "Hernia"])
    assert metrics["auc_macro"] == pytest.approx(expected)
    assert "Hernia" in caplog.text


def test_compute_metrics_applies_sigmoid_to_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(30, 15))
    targets = (rng.random((30, 15)) < 0.4).astype(float)
    from_logits = compute_metrics(EvalPrediction(predictions=logits, label_ids=targets))
    from_probabilities = multilabel_metrics(1 / (1 + np.exp(-logits)), targets)
    bce = from_logits.pop("bce")
    assert from_logits == pytest.approx(from_probabilities)
    # mean over every label of every image: -[y log p + (1 - y) log(1 - p)]
    p = 1 / (1 + np.exp(-logits))
    assert bce == pytest.approx(np.mean(-(targets * np.log(p) + (1 - targets) * np.log(1 - p))))


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"expected two \(n, 15\) arrays"):
        multilabel_metrics(np.zeros((3, 14)), np.zeros((3, 14)))
