"""VinDr-CXR 1.0.0 (Nguyen et al., Scientific Data 2022; PhysioNet, credentialed access).

``annotations/image_labels_train.csv``: ``image_id, rad_id`` and one 0/1 column per finding (22 local findings, 6
global diagnoses), one row per reader: three radiologists read each of the 15,000 training images independently.
``annotations/image_labels_test.csv``: the 3,000 test images, one consensus row each (five radiologists), read with or
without a ``rad_id`` column. ``--readers majority`` (default) makes a label positive when more than half of an
image's readers marked it, ``--readers any`` when one did.

Splits: the release's own, from the label file's name (``..._test.csv`` -> test; ``..._train.csv`` -> train, with
validation carved out patient-wise). VinDr publishes no patient ids, so each image counts as its own patient.
Files are ``<images_dir>/{train,test}/<image_id>.dicom`` (or directly in ``images_dir``); age, sex and view come
from each file's DICOM header (``PatientAge``, ``PatientSex``, ``ViewPosition``) where present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from ...label_map import LABEL_MAP
from ..nih import parse_age as parse_dicom_age
from .common import (
    UNKNOWN,
    SourceOptions,
    SourceTable,
    first_existing,
    mapped_labels,
    normalise_sex,
    read_release_csv,
    report_bad_values,
    table,
)

SOURCE = "vindr_cxr"
# Every mapped column must be there; the columns without an NIH counterpart (spelled differently in some copies)
# are read when present.
MAPPED_COLUMNS: tuple[str, ...] = tuple(name for name, target in LABEL_MAP[SOURCE].items() if target is not None)
REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", *MAPPED_COLUMNS)
SUFFIXES = (".dicom", ".dcm")


def split_of(labels_csv: str | Path) -> str:
    name = Path(labels_csv).name.lower()
    return "test" if "test" in name else "train" if "train" in name else ""


def combine_readers(frame: pd.DataFrame, columns: list[str], policy: str) -> pd.DataFrame:
    """One row per image: a label is 1 when a majority (``majority``) or any (``any``) of its readers marked it."""
    numbers = frame[columns].astype(np.float32)
    grouped = numbers.groupby(frame["image_id"], sort=False)
    if policy == "any":
        return grouped.max()
    return (grouped.mean() > 0.5).astype(np.float32)


def header_metadata(path: str | None) -> tuple[int, str, str]:
    """``(age, sex, view)`` from a DICOM header (not the pixels); unknown values as -1 / ""."""
    if path is None:
        return UNKNOWN, "", ""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError):
        return UNKNOWN, "", ""  # the image read reports the file itself
    try:
        age = parse_dicom_age(str(header.get("PatientAge", "")))
    except ValueError:
        age = UNKNOWN
    return age, normalise_sex(header.get("PatientSex", "")), str(header.get("ViewPosition", "")).strip().upper()


def read(options: SourceOptions) -> SourceTable:
    frame = read_release_csv(options.labels_csv, REQUIRED_COLUMNS, SOURCE)
    columns = [column for column in frame.columns if column in LABEL_MAP[SOURCE]]
    frame["image_id"] = frame["image_id"].str.strip()
    cells = frame[columns].apply(lambda column: column.str.strip())
    bad = [
        f"line {index + 2} column {column!r}: {value!r}"
        for column in columns
        for index, value in cells[column].items()
        if value not in ("0", "1", "0.0", "1.0")
    ]
    report_bad_values(bad, options.labels_csv, "cell(s) that are not 0 or 1")
    readers = frame.groupby("image_id", sort=False).size()
    combined = combine_readers(frame.assign(**cells), columns, options.readers)
    labels, findings, annotated = mapped_labels(SOURCE, combined.to_numpy(), columns, options.approximate_labels)
    root, split = Path(options.images_dir), split_of(options.labels_csv)
    folders = [root / split, root] if split else [root]
    candidates = [
        [folder / f"{image}{suffix}" for folder in folders for suffix in SUFFIXES] for image in combined.index
    ]
    metadata = [header_metadata(first_existing(paths)) for paths in candidates]
    first_line = {image: index + 2 for index, image in reversed(list(enumerate(frame["image_id"])))}
    rows = pd.DataFrame(
        {
            "image_id": combined.index,
            "labels": labels,
            "findings": findings,
            "patient_id": range(len(combined)),  # no patient ids in the release: one patient per image
            "age": [age for age, _, _ in metadata],
            "sex": [sex for _, sex, _ in metadata],
            "view_position": [view for _, _, view in metadata],
            "follow_up": UNKNOWN,
            "split": split,
            "candidates": candidates,
            "csv_line": [first_line[image] for image in combined.index],
        }
    )
    counts = {"reader_rows": len(frame), "max_readers_per_image": int(readers.max())}
    return table(SOURCE, annotated, rows, counts=counts)
