import numpy as np
import pytest
from conftest import MINI_KAGGLE_CSV

from cxr_vit.data.nih import multi_hot_matrix, read_labels_csv
from cxr_vit.data.splits import patient_wise_split


@pytest.fixture(scope="module")
def mini():
    frame = read_labels_csv(MINI_KAGGLE_CSV)
    return frame["patient_id"].to_numpy(), multi_hot_matrix(frame)


def test_no_patient_in_two_splits(mini):
    patients, labels = mini
    splits = patient_wise_split(patients, labels, seed=0)
    for patient in np.unique(patients):
        assert len(set(splits[patients == patient])) == 1


def test_deterministic_for_a_seed_and_different_across_seeds(mini):
    patients, labels = mini
    first = patient_wise_split(patients, labels, seed=7)
    assert (first == patient_wise_split(patients, labels, seed=7)).all()
    assert (first != patient_wise_split(patients, labels, seed=8)).any()


def test_every_label_with_three_patients_reaches_every_split(mini):
    patients, labels = mini
    splits = patient_wise_split(patients, labels, seed=1)
    for index in range(labels.shape[1]):
        positive_patients = len(np.unique(patients[labels[:, index] > 0]))
        present = {s for s in ("train", "validation", "test") if labels[splits == s, index].sum() > 0}
        if positive_patients >= 3:
            assert present == {"train", "validation", "test"}
        elif positive_patients == 2:  # Hernia in the mini set: both evaluation splits first
            assert {"validation", "test"} <= present


def test_fractions_are_roughly_met_on_many_small_patients():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(2000), 2)
    labels = (rng.random((4000, 15)) < 0.1).astype(float)
    splits = patient_wise_split(patients, labels, {"train": 0.7, "validation": 0.15, "test": 0.15}, seed=0)
    share = {s: np.mean(splits == s) for s in ("train", "validation", "test")}
    assert share["train"] == pytest.approx(0.7, abs=0.02)
    assert share["test"] == pytest.approx(0.15, abs=0.02)
    # stratified: each label's positive share per split follows the split's size
    for index in range(15):
        test_share = labels[splits == "test", index].sum() / labels[:, index].sum()
        assert test_share == pytest.approx(0.15, abs=0.04)


def test_bad_fractions_raise():
    with pytest.raises(ValueError, match="sum to 1"):
        patient_wise_split([1, 2], np.zeros((2, 15)), {"train": 0.5, "test": 0.2})
