"""PadChest (Hospital San Juan, Alicante; Bustos et al., Medical Image Analysis 2020).

One CSV, ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``: ``ImageID``, ``ImageDir`` (the numbered folder of
the 16-bit PNG), ``StudyDate_DICOM``, ``PatientID``, ``PatientBirth`` (a year), ``PatientSex_DICOM``, ``Projection``
and ``Labels``, a Python-list string of report terms such as ``['cardiomegaly', 'pleural effusion']``. A term is a
finding found in the report, so a mapped NIH label is positive when one of its terms is listed and negative
otherwise (PadChest annotates all 15). Terms the label map does not know are counted per image and listed in
``prepare.json`` (``unknown_labels``), never dropped silently; rows whose ``Labels`` is empty are left out and
counted (``images_without_labels``).

PadChest has no official split: the split is patient-wise. Age is the study year minus the birth year. Files are
``<images_dir>/<ImageDir>/<ImageID>``, or ``<images_dir>/<ImageID>`` when the folders were merged.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ...label_map import LABEL_MAP
from .common import (
    UNKNOWN,
    SourceOptions,
    SourceTable,
    mapped_labels,
    normalise_sex,
    read_release_csv,
    report_bad_values,
    table,
)

SOURCE = "padchest"
TERMS: tuple[str, ...] = tuple(LABEL_MAP[SOURCE])
REQUIRED_COLUMNS: tuple[str, ...] = (
    "ImageID", "ImageDir", "StudyDate_DICOM", "PatientID", "PatientBirth", "PatientSex_DICOM", "Projection", "Labels",
)  # fmt: skip


def parse_terms(text: str) -> list[str]:
    """``"['cardiomegaly', ' pleural effusion']"`` -> ``['cardiomegaly', 'pleural effusion']`` (stripped, lower case).

    Raises ValueError for anything but a list of strings; ``""`` / ``nan`` (no labels) gives ``[]``.
    """
    text = text.strip()
    if text in ("", "nan", "[]"):
        return []
    value = ast.literal_eval(text)  # a literal only: never evaluates code
    if not isinstance(value, list) or not all(isinstance(term, str) for term in value):
        raise ValueError(f"{text!r} is not a list of strings")
    return [term.strip().lower() for term in value if term.strip()]


def age_at_study(study_date: str, birth_year: str) -> int:
    """Years between the birth year and the study's year (``20140101``), -1 when either is missing."""
    try:
        years = int(study_date.strip()[:4]) - int(float(birth_year))
    except ValueError:
        return UNKNOWN
    return years if years >= 0 else UNKNOWN


def read(options: SourceOptions) -> SourceTable:
    frame = read_release_csv(options.labels_csv, REQUIRED_COLUMNS, SOURCE)
    terms, bad = [], []
    for index, text in enumerate(frame["Labels"]):
        try:
            terms.append(parse_terms(text))
        except (ValueError, SyntaxError):
            terms.append([])
            bad.append(f"line {index + 2}: {text[:60]!r}")
    report_bad_values(bad, options.labels_csv, "'Labels' value(s) that are not a list of label strings")
    labelled = np.asarray([bool(row) for row in terms])
    unknown = Counter(term for row in terms for term in set(row) if term not in LABEL_MAP[SOURCE])
    values = np.asarray([[float(term in set(row)) for term in TERMS] for row in terms], dtype=np.float32)
    labels, findings, annotated = mapped_labels(SOURCE, values, list(TERMS), options.approximate_labels)
    # PatientID is a long hash: patients are numbered in the order of their sorted ids (stable across runs).
    patient_numbers = {patient: number for number, patient in enumerate(sorted(set(frame["PatientID"].str.strip())))}
    root = Path(options.images_dir)
    rows = pd.DataFrame(
        {
            "image_id": frame["ImageID"].str.strip(),
            "labels": labels,
            "findings": findings,
            "patient_id": [patient_numbers[patient.strip()] for patient in frame["PatientID"]],
            "age": [age_at_study(d, b) for d, b in zip(frame["StudyDate_DICOM"], frame["PatientBirth"], strict=True)],
            "sex": [normalise_sex(sex) for sex in frame["PatientSex_DICOM"]],
            "view_position": frame["Projection"].str.strip().str.upper(),
            "follow_up": UNKNOWN,
            "split": "",
            "candidates": [
                [root / _folder(folder) / image, root / image]
                for folder, image in zip(frame["ImageDir"], frame["ImageID"].str.strip(), strict=True)
            ],
            "csv_line": range(2, len(frame) + 2),
        }
    )[labelled]
    counts = {"images_without_labels": int((~labelled).sum())}
    return table(SOURCE, annotated, rows, counts=counts, unknown_labels=dict(unknown.most_common()))


def _folder(value: str) -> str:
    """``ImageDir`` as its folder name (``"3"``; some exports write ``3.0``)."""
    value = value.strip()
    return value[:-2] if value.endswith(".0") else value
