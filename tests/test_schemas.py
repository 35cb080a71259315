"""ChestX-ray14 as other people published it: label layouts mapped by name, missing splits carved patient-wise."""

import datasets
import numpy as np
import pytest
from conftest import MINI_IMAGES

from cxr_vit.constants import LABELS, NO_FINDING
from cxr_vit.data import NIHDataError, canonical_splits, check_prepared_features
from cxr_vit.data.schemas import canonical_label

# "No Finding" first, as alkzar90/NIH-Chest-X-ray-dataset publishes it, and NIH's own "Infiltrate" spelling.
OTHER_ORDER = [NO_FINDING, *[label for label in LABELS if label != NO_FINDING]]
OTHER_NAMES = ["Infiltrate" if name == "Infiltration" else name.replace("_", " ") for name in OTHER_ORDER]


@pytest.fixture(scope="module")
def reference(prepared_mini) -> datasets.Dataset:
    """The bundled set as cxr-vit prepares it (canonical labels), all splits in one, 300 rows."""
    loaded = datasets.load_dataset(str(prepared_mini))
    return datasets.concatenate_datasets([loaded[split] for split in ("train", "validation", "test")]).select(
        range(300)
    )


def published(reference: datasets.Dataset, layout: str, with_files: bool = True) -> datasets.Dataset:
    """The same films and labels in another publisher's layout (images from the NIH files, so paths carry names)."""
    labels = np.asarray(reference["labels"], dtype=int)
    other_positions = [LABELS.index(name) for name in OTHER_ORDER]
    columns: dict = {"image": [str(MINI_IMAGES / name) for name in reference["image_id"]]}
    features: dict = {"image": datasets.Image()}
    if layout == "class_indices":
        columns["labels"] = [[OTHER_ORDER.index(LABELS[i]) for i in np.flatnonzero(row)] for row in labels]
        features["labels"] = datasets.Sequence(datasets.ClassLabel(names=OTHER_NAMES))
    elif layout == "named_multi_hot":
        columns["targets"] = [row[other_positions].tolist() for row in labels]
        columns["classes"] = [[] for _ in labels]
        features["targets"] = datasets.List(datasets.Value("int8"), length=len(LABELS))
        features["classes"] = datasets.List(datasets.ClassLabel(names=OTHER_NAMES))
    elif layout == "columns":
        for name, position in zip(OTHER_NAMES, other_positions, strict=True):
            columns[name] = labels[:, position].tolist()
            features[name] = datasets.Value("int64")
    elif layout == "string":
        columns["Finding Labels"] = ["|".join(LABELS[i] for i in np.flatnonzero(row)) for row in labels]
        columns["Patient ID"] = reference["patient_id"]
        columns["Patient Age"] = [f"{age:03d}Y" for age in reference["age"]]  # the Kaggle sample's codes
        features["Finding Labels"] = datasets.Value("string")
        features["Patient ID"] = datasets.Value("int64")
        features["Patient Age"] = datasets.Value("string")
    dataset = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    if not with_files:  # the same pixels with no file names: no patient ids to be had
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
        dataset = dataset.map(lambda row: {"image": {"bytes": open(row["image"]["path"], "rb").read(), "path": None}})
        dataset = dataset.cast_column("image", datasets.Image())
    return dataset


def test_label_names_map_by_name_and_nih_spellings():
    assert canonical_label("Pleural Thickening") == "Pleural_Thickening"
    assert canonical_label("no finding") == NO_FINDING and canonical_label("Infiltrate") == "Infiltration"
    assert canonical_label("Pneumonitis") is None


@pytest.mark.parametrize("layout", ["class_indices", "named_multi_hot", "columns", "string"])
def test_every_layout_maps_to_the_canonical_labels(reference, layout):
    other = published(reference, layout)
    converted = canonical_splits(datasets.DatasetDict({"train": other, "test": other.select(range(40))}), "other")
    assert set(converted) == {"train", "validation", "test"}
    check_prepared_features(converted["train"], "converted")
    together = datasets.concatenate_datasets([converted["train"], converted["validation"]])
    by_patient = dict(zip(reference["image_id"], np.asarray(reference["labels"]), strict=True))
    names = [str(MINI_IMAGES / name) for name in reference["image_id"]]
    assert len(together) == len(reference)  # validation carved out of train, nothing lost or doubled
    expected = np.stack([by_patient[name.rsplit("/", 1)[-1]] for name in names])
    assert np.asarray(converted["test"]["labels"]).tolist() == expected[:40].tolist()
    # patient-wise: from the patient column, or from the NIH file names (00000013_005.png is patient 13)
    assert sorted(together["patient_id"]) == sorted(reference["patient_id"])
    assert not set(converted["train"]["patient_id"]) & set(converted["validation"]["patient_id"])
    if layout == "string":  # metadata kept under cxr-vit's names, ages in years
        assert converted["test"]["age"] == reference["age"][:40]


def test_a_split_named_valid_is_the_validation_split(reference):
    other = published(reference, "class_indices")
    converted = canonical_splits(datasets.DatasetDict({"train": other, "valid": other, "test": other}), "other")
    assert set(converted) == {"train", "validation", "test"} and len(converted["validation"]) == len(other)


def test_unknown_label_names_are_listed(reference):
    other = published(reference, "string")
    other = other.map(lambda row, i: {"Finding Labels": "Pneumonitis" if i == 3 else row["Finding Labels"]},
                      with_indices=True)  # fmt: skip
    with pytest.raises(NIHDataError, match=r"unknown label name\(s\) \['Pneumonitis'\]; the 15 ChestX-ray14 labels"):
        canonical_splits(datasets.DatasetDict({"train": other}), "other")


def test_without_patient_ids_a_missing_split_is_refused(reference):
    other = published(reference.select(range(30)), "class_indices", with_files=False)
    with pytest.raises(NIHDataError, match="no patient ids .* an image-wise split would put one patient's films"):
        canonical_splits(datasets.DatasetDict({"train": other}), "other")
    complete = canonical_splits(datasets.DatasetDict({"train": other, "validation": other, "test": other}), "other")
    assert "patient_id" not in complete["test"].column_names  # nothing to carve: accepted as published


def test_a_cxr_vit_prepared_dataset_passes_unchanged(prepared_mini):
    loaded = datasets.load_dataset(str(prepared_mini))
    converted = canonical_splits(loaded, "prepared")
    for split in loaded:
        assert converted[split] is loaded[split]
