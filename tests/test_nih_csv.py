import numpy as np
import pandas as pd
import pytest
from conftest import MINI_FULL_CSV, MINI_IMAGES, MINI_KAGGLE_CSV

from cxr_vit.constants import LABELS
from cxr_vit.data.nih import NIHDataError, index_images, parse_age, read_labels_csv


def test_both_real_formats_give_the_same_rows():
    kaggle = read_labels_csv(MINI_KAGGLE_CSV)
    full = read_labels_csv(MINI_FULL_CSV)
    assert len(kaggle) == len(full) == 1000
    pd.testing.assert_frame_equal(kaggle, full)


def test_labels_are_multi_hot_in_canonical_order():
    frame = read_labels_csv(MINI_KAGGLE_CSV)
    raw = pd.read_csv(MINI_KAGGLE_CSV)
    for (_, row), (_, raw_row) in zip(frame.head(50).iterrows(), raw.head(50).iterrows(), strict=False):
        names = set(raw_row["Finding Labels"].split("|"))
        assert row["labels"] == [1.0 if label in names else 0.0 for label in LABELS]
        assert row["findings"] == [label for label in LABELS if label in names]
    counts = np.asarray(frame["labels"].tolist()).sum(0)
    expected = [raw["Finding Labels"].str.split("|").apply(lambda names, lab=lab: lab in names).sum() for lab in LABELS]
    assert counts.tolist() == expected
    assert all(c > 0 for c in counts), "the bundled set has all 15 labels"


@pytest.mark.parametrize(
    ("value", "years"), [("060Y", 60), ("57", 57), ("013M", 1), ("011M", 0), ("001D", 0), (" 45 ", 45), ("72.0", 72)]
)
def test_parse_age(value, years):
    assert parse_age(value) == years


@pytest.mark.parametrize("value", ["", "abc", "60 years", "-5", "12X"])
def test_parse_age_rejects(value):
    with pytest.raises(ValueError):
        parse_age(value)


HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"


def write(tmp_path, text, name="labels.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("a.png,Cardiomegaly|Nope,0,1,50,M,PA\n", "line 2 (a.png): unknown label(s) ['Nope']"),
        ("a.png,,0,1,50,M,PA\n", "line 2 (a.png): empty 'Finding Labels'"),
        (
            "a.png,Mass,0,1,50,M,PA\na.png,Mass,1,1,51,M,PA\n",
            "line 3 (a.png): duplicate 'Image Index', first seen on line 2",
        ),
        ("../x.png,Mass,0,1,50,M,PA\n", "line 2 (../x.png): 'Image Index' must be a plain file name"),
        ("/etc/x.png,Mass,0,1,50,M,PA\n", "'Image Index' must be a plain file name"),
        ("a.png,Mass,0,1,old,M,PA\n", "line 2 (a.png): 'Patient Age' age 'old' is not a number"),
        ("a.png,Mass,0,p1,50,M,PA\n", "line 2 (a.png): 'Patient ID' 'p1' is not an integer"),
        ("a.png,No Finding|Mass,0,1,50,M,PA\n", "'No Finding' together with findings"),
    ],
)
def test_bad_rows_name_line_and_image(tmp_path, rows, message):
    with pytest.raises(NIHDataError, match="labels.csv") as error:
        read_labels_csv(write(tmp_path, HEADER + rows))
    assert message in str(error.value)


def test_missing_columns_are_named(tmp_path):
    with pytest.raises(NIHDataError, match=r"missing required column\(s\) \['Patient Age'"):
        read_labels_csv(
            write(
                tmp_path,
                "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Gender,View Position\na.png,Mass,0,1,M,PA\n",
            )
        )


def test_bom_and_stray_whitespace_are_tolerated(tmp_path):
    text = (
        " Image Index , Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
        " a.png , Mass | Nodule ,0, 7 ,060Y,M,PA\n"
    )
    frame = read_labels_csv(write(tmp_path, text, encoding="utf-8-sig"))
    row = frame.iloc[0]
    assert row["image_id"] == "a.png" and row["findings"] == ["Mass", "Nodule"] and row["patient_id"] == 7


def test_index_images_handles_nested_release_layout(tmp_path):
    for folder, name in [("images_001/images", "00000001_000.png"), ("images_002/images", "00000002_000.png")]:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / name).write_bytes((MINI_IMAGES / name).read_bytes())
    index = index_images(tmp_path)
    assert sorted(index) == ["00000001_000.png", "00000002_000.png"]


def test_index_images_rejects_duplicate_names(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes(b"")
    with pytest.raises(NIHDataError, match="found twice"):
        index_images(tmp_path)
