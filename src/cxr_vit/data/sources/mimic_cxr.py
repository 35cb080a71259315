"""MIMIC-CXR-JPG 2.0.0 (Johnson et al. 2019; PhysioNet, credentialed access).

Three CSVs: labels per **study** in ``mimic-cxr-2.0.0-chexpert.csv`` (``subject_id, study_id`` and the CheXpert
labeler's 14 observations), images per ``dicom_id`` in ``mimic-cxr-2.0.0-metadata.csv`` (``ViewPosition``), and the
official split per image in ``mimic-cxr-2.0.0-split.csv`` (``train`` / ``validate`` / ``test``), which is used as is
(a random split, as some loaders make, mixes one patient's studies across splits). Files are
``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``; ``--images_dir`` may be the folder holding ``files/`` or ``files/``.

Every image of a labelled study gets the study's labels; every view is kept (``ViewPosition``; blank for some films).
Images of a study that has no label row are left out and counted (``images_without_labels``). The JPG release has
no age or sex (they are in MIMIC-IV): age is -1 and sex empty.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ...label_map import LABEL_MAP
from .common import (
    UNKNOWN,
    SourceDataError,
    SourceOptions,
    SourceTable,
    chexpert_values,
    mapped_labels,
    read_release_csv,
    report_bad_values,
    table,
)

SOURCE = "mimic_cxr"
LABEL_COLUMNS: tuple[str, ...] = tuple(LABEL_MAP[SOURCE])
REQUIRED_COLUMNS: tuple[str, ...] = ("subject_id", "study_id", *LABEL_COLUMNS)
METADATA_COLUMNS: tuple[str, ...] = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "split")
SPLITS = {"train": "train", "validate": "validation", "test": "test"}


def _integers(frame: pd.DataFrame, columns: tuple[str, ...], path) -> None:
    bad = [
        f"line {index + 2} column {column!r}: {value!r}"
        for column in columns
        for index, value in frame[column].items()
        if not value.strip().isdigit()
    ]
    report_bad_values(bad, path, "id(s) that are not whole numbers")


def read(options: SourceOptions) -> SourceTable:
    if options.metadata_csv is None or options.split_csv is None:
        raise SourceDataError(
            "--source mimic_cxr needs --metadata_csv mimic-cxr-2.0.0-metadata.csv (the images and their views) and "
            "--split_csv mimic-cxr-2.0.0-split.csv (the official split)"
        )
    labels_frame = read_release_csv(options.labels_csv, REQUIRED_COLUMNS, SOURCE)
    metadata = read_release_csv(options.metadata_csv, METADATA_COLUMNS, SOURCE, "metadata file")
    split_frame = read_release_csv(options.split_csv, SPLIT_COLUMNS, SOURCE, "split file")
    _integers(labels_frame, ("subject_id", "study_id"), options.labels_csv)
    _integers(metadata, ("subject_id", "study_id"), options.metadata_csv)
    values, uncertain = chexpert_values(labels_frame, list(LABEL_COLUMNS), options.uncertain, options.labels_csv)
    labels, findings, annotated = mapped_labels(SOURCE, values, list(LABEL_COLUMNS), options.approximate_labels)
    studies = pd.DataFrame(
        {
            "study_key": labels_frame["study_id"].str.strip().astype(int),
            "labels": labels,
            "findings": findings,
        }
    ).drop_duplicates("study_key")
    images = metadata.assign(
        study_key=metadata["study_id"].str.strip().astype(int),
        csv_line=range(2, len(metadata) + 2),
    ).merge(studies, on="study_key", how="left")
    without_labels = int(images["labels"].isna().sum())
    images = images[images["labels"].notna()]

    official = {
        dicom.strip(): split.strip() for dicom, split in zip(split_frame["dicom_id"], split_frame["split"], strict=True)
    }
    unknown = sorted({value for value in official.values() if value not in SPLITS})
    if unknown:
        raise SourceDataError(f"{options.split_csv}: split value(s) {unknown}; the release uses {list(SPLITS)}")
    dicoms = images["dicom_id"].str.strip()
    unsplit = [f"line {line}: {dicom}" for dicom, line in zip(dicoms, images["csv_line"], strict=True)]
    unsplit = [entry for entry, dicom in zip(unsplit, dicoms, strict=True) if dicom not in official]
    report_bad_values(unsplit, options.metadata_csv, f"image(s) that {options.split_csv} does not list")

    root = Path(options.images_dir)
    subjects = images["subject_id"].str.strip()
    relative = [
        Path(f"p{subject[:2]}", f"p{subject}", f"s{study}", f"{dicom}.jpg")
        for subject, study, dicom in zip(subjects, images["study_key"], dicoms, strict=True)
    ]
    rows = pd.DataFrame(
        {
            "image_id": dicoms,
            "labels": images["labels"],
            "findings": images["findings"],
            "patient_id": subjects.astype(int),
            "age": UNKNOWN,
            "sex": "",
            "view_position": images["ViewPosition"].str.strip().str.upper(),
            "follow_up": UNKNOWN,
            "split": [SPLITS[official[dicom]] for dicom in dicoms],
            "candidates": [[root / "files" / path, root / path] for path in relative],
            "csv_line": images["csv_line"],
        }
    )
    counts = {"uncertain_values": uncertain, "images_without_labels": without_labels, "label_rows": len(labels_frame)}
    return table(SOURCE, annotated, rows, counts=counts)
