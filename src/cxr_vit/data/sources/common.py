"""What every release reader shares: its options, the table it returns, CSV checks, and uncertain-label policies.

A reader turns a release's native files into a :class:`SourceTable`: one row per image with the canonical 15
``labels`` (NaN where the release does not annotate a label, :mod:`cxr_vit.label_map`), patient, age, sex, view,
the release's official split where it has one, and the candidate paths of the image file. The rest (views,
missing files, splits, decoding) is the same for every release (:mod:`cxr_vit.data.sources.build`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...label_map import LabelMapper, positive_findings
from ..nih import NIHDataError

UNCERTAIN_POLICIES = ("missing", "negative", "positive")
READER_POLICIES = ("majority", "any")
UNKNOWN = -1  # age / follow-up a release does not give
RELEASE_NAMES = {
    "nih": "NIH ChestX-ray14",
    "chexpert": "CheXpert",
    "mimic_cxr": "MIMIC-CXR-JPG",
    "padchest": "PadChest",
    "vindr_cxr": "VinDr-CXR",
}
# The table's columns, in the prepared schema's names, plus the reader's bookkeeping.
TABLE_COLUMNS = (
    "image_id", "labels", "findings", "patient_id", "age", "sex", "view_position", "follow_up", "split",
    "candidates", "csv_line",
)  # fmt: skip


class SourceDataError(NIHDataError):
    """Bad input for one release: the message names the file, row or column at fault."""


@dataclass
class SourceOptions:
    """Where a release's files are and how to read its labels (``scripts/prepare_data.py``'s options)."""

    source: str
    images_dir: str | os.PathLike
    labels_csv: str | os.PathLike
    metadata_csv: str | os.PathLike | None = None
    split_csv: str | os.PathLike | None = None
    uncertain: str = "missing"
    readers: str = "majority"
    approximate_labels: bool = False
    views: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise SourceDataError(f"--uncertain must be one of {UNCERTAIN_POLICIES}, got {self.uncertain!r}")
        if self.readers not in READER_POLICIES:
            raise SourceDataError(f"--readers must be one of {READER_POLICIES}, got {self.readers!r}")


@dataclass
class SourceTable:
    """A release's images as rows (:data:`TABLE_COLUMNS`), with what the reader counted on the way."""

    source: str
    annotated_labels: tuple[str, ...]
    frame: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    # Label strings the map does not know (PadChest), with the number of images carrying each.
    unknown_labels: dict[str, int] = field(default_factory=dict)


def read_release_csv(
    path: str | os.PathLike | None, required: tuple[str, ...], source: str, what: str = "label file"
) -> pd.DataFrame:
    """Read a release CSV as strings; a missing file or column is one line naming the file and what it lacks.

    The check is what tells a CheXpert ``train.csv`` given with ``--source vindr_cxr`` apart: the columns the
    release's file must have are listed, not guessed from the file name.
    """
    name = RELEASE_NAMES[source]
    if path is None:
        raise SourceDataError(f"--source {source} needs its {what} ({name})")
    path = Path(path)
    if not path.is_file():
        raise SourceDataError(f"{name} {what} {str(path)!r} does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise SourceDataError(f"{path}: not a readable CSV file ({err})") from err
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise SourceDataError(f"{path}: not a {name} {what} (--source {source}): it lacks the column(s) {missing}")
    if frame.empty:
        raise SourceDataError(f"{path}: has a header but no rows")
    return frame


def report_bad_values(bad: list[str], path: str | os.PathLike, what: str) -> None:
    """One error listing the first rows with values a release never writes."""
    if bad:
        shown = "; ".join(bad[:5]) + (f"; ... and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise SourceDataError(f"{path}: {len(bad)} {what}: {shown}")


def chexpert_values(frame: pd.DataFrame, columns: list[str], uncertain: str, path) -> tuple[np.ndarray, int]:
    """The CheXpert labeler's cells (``1.0`` / ``0.0`` / ``-1.0`` uncertain / blank = not mentioned) as floats, and
    how many were uncertain.

    Blank is negative: the report does not mention the finding (the convention of the CheXpert paper and of
    MIMIC-CXR-JPG for what the labeler did not find). ``-1.0`` follows ``uncertain``: NaN (``missing``: skipped by
    loss and metrics), 0 or 1.
    """
    codes = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "": 0.0, "-1.0": -1.0, "-1": -1.0}
    cells = frame[columns].apply(lambda column: column.str.strip())
    bad = [
        f"line {index + 2} column {column!r}: {value!r}"
        for column in columns
        for index, value in cells[column].items()
        if value not in codes
    ]
    report_bad_values(bad, path, "cell(s) that are not 1.0, 0.0, -1.0 or blank")
    values = cells.apply(lambda column: column.map(codes)).to_numpy(dtype=np.float32, copy=True)
    uncertain_cells = int((values == -1.0).sum())
    values[values == -1.0] = {"missing": np.nan, "negative": 0.0, "positive": 1.0}[uncertain]
    return values, uncertain_cells


def mapped_labels(source: str, values: np.ndarray, columns: list[str], approximate_labels: bool):
    """``(labels, findings, annotated)``: the 15-label rows, their positive names and the annotated labels."""
    mapper = LabelMapper(source, approximate_labels)
    labels = mapper(values, columns)
    return list(labels), [positive_findings(row) for row in labels], mapper.annotated


def parse_age(value: str) -> int:
    """Whole years from a number (``68``, ``68.0``); -1 when blank or not a number."""
    try:
        years = float(value)
    except (TypeError, ValueError):
        return UNKNOWN
    return int(years) if np.isfinite(years) and years >= 0 else UNKNOWN


def normalise_sex(value: str) -> str:
    """``M`` / ``F`` as in NIH's metadata; anything else (``Unknown``, ``O``, blank) is the empty string."""
    value = str(value).strip().upper()
    return {"MALE": "M", "FEMALE": "F", "M": "M", "F": "F"}.get(value, "")


def first_existing(candidates: list[Path]) -> str | None:
    """The first of a row's candidate image paths that is a file (a release unpacked in any of its usual layouts)."""
    return next((str(path) for path in candidates if path.is_file()), None)


def table(source: str, annotated: tuple[str, ...], frame: pd.DataFrame, **extra) -> SourceTable:
    """A :class:`SourceTable` with the frame's columns in :data:`TABLE_COLUMNS` order."""
    return SourceTable(source, annotated, frame[list(TABLE_COLUMNS)].reset_index(drop=True), **extra)
