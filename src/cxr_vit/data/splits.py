"""Patient-wise, label-stratified train/validation/test splits.

An image-wise random split (e.g. scikit-learn's ``train_test_split`` over images) puts follow-up studies of the same
patient in train and test and inflates AUC. Here whole patients are assigned to splits with iterative
stratification (Sechidis et al., 2011) lifted to patients: labels are handled rarest first, and each of a
label's unassigned patients goes to the split that still wants the most images of that label. sklearn has
no grouped multi-label stratifier, hence this small implementation.

One rule on top: while a split has no positive patient for a label, it gets the next one, evaluation splits
(the smaller fractions) first. A label seen in only a few patients (Hernia: 13 images in the Kaggle sample)
then still has positives in validation and test, so its AUC can be measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}


def patient_wise_split(
    patient_ids: Sequence[int],
    labels: np.ndarray,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 42,
) -> np.ndarray:
    """Assign every image to a split so that no patient is in two splits.

    Args:
        patient_ids: patient of each image, length n.
        labels: (n, num_labels) multi-hot matrix.
        fractions: split name -> wanted fraction of images; must sum to 1.
        seed: the same seed and input always give the same split.

    Returns:
        An array of n split names.
    """
    names = list(fractions)
    wanted = np.array([fractions[name] for name in names], dtype=np.float64)
    if np.any(wanted < 0) or not np.isclose(wanted.sum(), 1.0):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    patient_ids = np.asarray(patient_ids)
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2 or len(labels) != len(patient_ids):
        raise ValueError("labels must be an (n_images, n_labels) matrix with one row per patient id")

    rng = np.random.default_rng(seed)
    patients, image_patient = np.unique(patient_ids, return_inverse=True)
    n_patients, n_labels = len(patients), labels.shape[1]
    # Per patient: positive image counts per label and its number of images.
    patient_labels = np.zeros((n_patients, n_labels))
    np.add.at(patient_labels, image_patient, labels)
    patient_images = np.bincount(image_patient, minlength=n_patients).astype(np.float64)

    want_images = wanted * patient_images.sum()  # per split
    want_labels = np.outer(wanted, patient_labels.sum(axis=0))  # per split, per label
    has_positive = np.zeros((len(names), n_labels), dtype=bool)
    active = [int(s) for s in np.flatnonzero(wanted > 0)]
    assignment = np.full(n_patients, -1)
    order = rng.permutation(n_patients)  # a seeded order breaks ties reproducibly

    def assign(patient: int, split: int) -> None:
        assignment[patient] = split
        unassigned[patient] = False
        want_images[split] -= patient_images[patient]
        want_labels[split] -= patient_labels[patient]
        has_positive[split] |= patient_labels[patient] > 0

    unassigned = np.ones(n_patients, dtype=bool)
    while unassigned.any():
        positives = (patient_labels[unassigned] > 0).sum(axis=0)
        if not positives.any():  # only patients without any positive label are left
            for patient in (p for p in order if unassigned[p]):
                assign(patient, max(active, key=lambda s: (want_images[s], -s)))
            break
        label = int(np.argmin(np.where(positives > 0, positives, np.inf)))
        # Largest patients first (they are the hardest to place), ties in the seeded order.
        queue = sorted(
            (p for p in order if unassigned[p] and patient_labels[p, label] > 0),
            key=lambda p: -patient_labels[p, label],
        )
        while queue:
            lacking = [s for s in active if not has_positive[s, label]]
            if lacking:  # cover with the smallest patient, smallest split first
                split = min(lacking, key=lambda s: (wanted[s], -want_images[s], s))
                assign(queue.pop(), split)
            else:
                split = max(active, key=lambda s: (want_labels[s, label], want_images[s], -s))
                assign(queue.pop(0), split)
    return np.asarray(names, dtype=object)[assignment[image_patient]]
