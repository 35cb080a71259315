"""CheXpert (Stanford; Irvin et al., AAAI 2019): ``train.csv`` / ``valid.csv`` of the small or the full-size release.

Columns ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and the CheXpert labeler's 14 observations (1.0 / 0.0 / -1.0
uncertain / blank). ``Path`` (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``) is relative to the
folder above the release folder; ``--images_dir`` may be that folder or the release folder itself.

Splits: the release's own. Films under ``train/`` are training films (validation is carved out of them patient-wise);
films under ``valid/`` (the 234 radiologist-labelled films of 200 patients, no uncertain labels) are the test split,
as the official test labels are not part of this release. Every view is read (``Frontal/Lateral``; frontal films
take the ``AP/PA`` value as their view), every study of every patient.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ...label_map import LABEL_MAP
from .common import (
    UNKNOWN,
    SourceOptions,
    SourceTable,
    chexpert_values,
    mapped_labels,
    normalise_sex,
    parse_age,
    read_release_csv,
    report_bad_values,
    table,
)

SOURCE = "chexpert"
LABEL_COLUMNS: tuple[str, ...] = tuple(LABEL_MAP[SOURCE])
REQUIRED_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *LABEL_COLUMNS)
_PATIENT = re.compile(r"(?:^|/)patient(\d+)/")
# The release folder's sub-folder of each film -> its split (valid/ is the expert-labelled held-out set).
SPLIT_FOLDERS = {"train": "train", "valid": "test", "test": "test"}


def split_of(path: str) -> str:
    """``train`` / ``test`` from the film's folder inside the release, or "" when it names neither."""
    parts = path.split("/")
    return next((SPLIT_FOLDERS[part] for part in parts[:2] if part in SPLIT_FOLDERS), "")


def view_of(frontal_lateral: str, ap_pa: str) -> str:
    """``AP`` / ``PA`` / ``LL`` ... for frontal films (``AP/PA``), ``LATERAL`` for lateral ones."""
    if frontal_lateral.strip().lower() == "lateral":
        return "LATERAL"
    return ap_pa.strip().upper() or "FRONTAL"


def read(options: SourceOptions) -> SourceTable:
    frame = read_release_csv(options.labels_csv, REQUIRED_COLUMNS, SOURCE)
    values, uncertain = chexpert_values(frame, list(LABEL_COLUMNS), options.uncertain, options.labels_csv)
    labels, findings, annotated = mapped_labels(SOURCE, values, list(LABEL_COLUMNS), options.approximate_labels)
    paths = frame["Path"].str.strip()
    patients = [_PATIENT.search(path) for path in paths]
    report_bad_values(
        [f"line {i + 2}: {path!r}" for i, (path, m) in enumerate(zip(paths, patients, strict=True)) if m is None],
        options.labels_csv,
        "'Path' value(s) without a patientNNNNN folder",
    )
    root = Path(options.images_dir)
    ages = [parse_age(age) for age in frame["Age"]]
    rows = pd.DataFrame(
        {
            "image_id": paths,
            "labels": labels,
            "findings": findings,
            "patient_id": [int(match.group(1)) for match in patients],
            "age": [UNKNOWN if age == 0 else age for age in ages],  # a few films carry age 0: unknown
            "sex": [normalise_sex(sex) for sex in frame["Sex"]],
            "view_position": [view_of(fl, ap) for fl, ap in zip(frame["Frontal/Lateral"], frame["AP/PA"], strict=True)],
            "follow_up": UNKNOWN,
            "split": [split_of(path) for path in paths],
            # relative to the folder above the release folder, or to the release folder itself
            "candidates": [[root / path, root / path.split("/", 1)[-1]] for path in paths],
            "csv_line": range(2, len(frame) + 2),
        }
    )
    return table(SOURCE, annotated, rows, counts={"uncertain_values": uncertain})
