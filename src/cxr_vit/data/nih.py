"""Read and validate the NIH ChestX-ray14 label files and image folders.

Two real CSV formats exist and both are accepted:

* the Kaggle "NIH Chest X-rays sample" ``sample_labels.csv``: ages like ``060Y`` (``M``/``D`` for infants),
  columns ``OriginalImagePixelSpacing_x`` / ``_y``;
* the full release's ``Data_Entry_2017*.csv``: integer ages, bracketed columns ``OriginalImage[Width,Height]``.

Only the seven columns both share are used. Every problem is reported with the CSV line number and image
name, because a 112,120-row file is not something a user should have to bisect.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..constants import LABEL2ID, LABELS, NUM_LABELS
from .images import is_xray_file

REQUIRED_COLUMNS: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
# Sample-format ages carry a unit: Y(ears), M(onths), W(eeks), D(ays); the full release has plain integers.
_AGE_PATTERN = re.compile(r"^(\d+(?:\.0+)?)\s*([YMWD]?)$", re.IGNORECASE)
_DAYS_PER_UNIT = {"": 365.0, "Y": 365.0, "M": 365.0 / 12, "W": 7.0, "D": 1.0}
_MAX_ERRORS_SHOWN = 10


class NIHDataError(ValueError):
    """Bad NIH input: the message names the file, CSV line and image at fault and how to fix it."""


def raise_collected(problems: list[str], what: str, path: str | os.PathLike) -> None:
    """One error for every problem found in a file (the first few listed), so they can all be fixed at once."""
    if problems:
        shown = "\n  ".join(problems[:_MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(problems) - _MAX_ERRORS_SHOWN} more" if len(problems) > _MAX_ERRORS_SHOWN else ""
        raise NIHDataError(f"{path}: {len(problems)} {what}:\n  {shown}{more}")


def parse_age(value: str) -> int:
    """Age in whole years from ``'060Y'``, ``'013M'``, ``'001D'`` or ``'57'``; raises ValueError otherwise."""
    match = _AGE_PATTERN.match(value.strip())
    if match is None:
        raise ValueError(f"age {value!r} is not a number of years (like 57) or NIH code (like 060Y, 013M)")
    amount, unit = float(match.group(1)), match.group(2).upper()
    return int(amount * _DAYS_PER_UNIT[unit] // 365)


def encode_labels(findings: list[str]) -> list[float]:
    """Multi-hot vector in the canonical label order."""
    vector = [0.0] * NUM_LABELS
    for name in findings:
        vector[LABEL2ID[name]] = 1.0
    return vector


def read_labels_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read an NIH label CSV (either format) into one validated row per image.

    Returns a DataFrame with columns ``image_id``, ``findings`` (list of label names), ``labels`` (multi-hot,
    canonical order), ``patient_id``, ``age``, ``sex``, ``view_position``, ``follow_up`` and ``csv_line``
    (the 1-based line in the file, for messages).
    """
    path = Path(path)
    if not path.is_file():
        raise NIHDataError(f"labels CSV {str(path)!r} does not exist")
    try:
        # utf-8-sig: spreadsheet exports add a BOM that would otherwise stick to "Image Index".
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise NIHDataError(f"{path}: not a readable CSV file ({err})") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise NIHDataError(
            f"{path}: missing required column(s) {missing}; found {list(frame.columns)}. Expected the NIH "
            "sample_labels.csv or Data_Entry_2017*.csv header."
        )
    frame = frame[list(REQUIRED_COLUMNS)].apply(lambda column: column.str.strip())
    if frame.empty:
        raise NIHDataError(f"{path}: has a header but no rows")

    problems: list[str] = []
    records = []
    seen: dict[str, int] = {}
    for offset, row in enumerate(frame.itertuples(index=False)):
        line = offset + 2  # line 1 is the header
        image_id, finding_labels, follow_up, patient_id, age, sex, view = row
        where = f"line {line} ({image_id or '<empty Image Index>'})"
        row_problems = []
        if not image_id or image_id != os.path.basename(image_id) or image_id in (".", ".."):
            row_problems.append(f"{where}: 'Image Index' must be a plain file name inside the images folder")
        elif image_id in seen:
            row_problems.append(f"{where}: duplicate 'Image Index', first seen on line {seen[image_id]}")
        else:
            seen[image_id] = line
        findings = [name.strip() for name in finding_labels.split("|") if name.strip()]
        if not findings:
            row_problems.append(f"{where}: empty 'Finding Labels' (use 'No Finding' for normal studies)")
        unknown = [name for name in findings if name not in LABEL2ID]
        if unknown:
            row_problems.append(f"{where}: unknown label(s) {unknown}; known labels: {', '.join(LABELS)}")
        if "No Finding" in findings and len(findings) > 1:
            row_problems.append(f"{where}: 'No Finding' together with findings {findings}")
        try:
            age_years = parse_age(age)
        except ValueError as err:
            row_problems.append(f"{where}: 'Patient Age' {err}")
            age_years = -1
        numbers = {}
        for column, value in (("Patient ID", patient_id), ("Follow-up #", follow_up)):
            try:
                numbers[column] = int(float(value))
            except ValueError:
                row_problems.append(f"{where}: {column!r} {value!r} is not an integer")
        if row_problems:
            problems.extend(row_problems)
            continue
        ordered = sorted(set(findings), key=LABEL2ID.__getitem__)
        records.append(
            {
                "image_id": image_id,
                "findings": ordered,
                "labels": encode_labels(ordered),
                "patient_id": numbers["Patient ID"],
                "age": age_years,
                "sex": sex,
                "view_position": view,
                "follow_up": numbers["Follow-up #"],
                "csv_line": line,
            }
        )
    raise_collected(problems, "bad row(s)", path)
    return pd.DataFrame.from_records(records)


def index_images(images_dir: str | os.PathLike) -> dict[str, Path]:
    """Map file name -> path for every image below ``images_dir``.

    Handles both the flat Kaggle layout and the full release's ``images_001/images/...`` subfolders. Images are
    PNG/JPEG/TIFF/BMP/DICOM by extension, and DICOM by content (PACS exports named by UID or without extension).
    Symbolic links that lead outside the folder are not followed, so nothing outside ``images_dir`` is ever read.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise NIHDataError(f"images folder {str(root)!r} does not exist or is not a folder")
    resolved_root = root.resolve()
    index: dict[str, Path] = {}
    duplicates = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.resolve().is_relative_to(resolved_root) or not is_xray_file(path):
                continue  # checked in this order: a file outside the folder is not even opened
            if name in index:
                duplicates.append(f"{name}: {index[name]} and {path}")
            index[name] = path
    raise_collected(duplicates, "image name(s) found twice", root)
    return index


def multi_hot_matrix(frame: pd.DataFrame) -> np.ndarray:
    """(n_images, 15) float32 matrix of the frame's ``labels`` column."""
    return np.asarray(frame["labels"].tolist(), dtype=np.float32).reshape(len(frame), NUM_LABELS)


def read_image_list(path: str | os.PathLike) -> list[str]:
    """Read an official split list (``train_val_list.txt`` / ``test_list.txt``): one image name per line."""
    path = Path(path)
    if not path.is_file():
        raise NIHDataError(f"split list {str(path)!r} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
