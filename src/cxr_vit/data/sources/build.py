"""From a release's :class:`SourceTable` to the prepared splits: views, missing files, splits, decoding.

The same for every release, so that no reader filters anything on its own: rows leave only through ``--views``
(counted), a missing file under ``--on_bad_image skip`` (counted and listed) or a row the reader could not label
(counted by the reader). Official splits are kept; a training split without validation gets a patient-wise
carve-out; a release without splits is split patient-wise. Only splits with images are written.
"""

from __future__ import annotations

import os

import datasets
import numpy as np
import pandas as pd

from ...constants import SPLITS
from ..builder import DEFAULT_SPLIT_SEED, missing_images_error, nih_features, prepared_example, read_or_skip
from ..splits import patient_wise_split
from . import chexpert, mimic_cxr, padchest, vindr_cxr
from .common import SourceDataError, SourceOptions, SourceTable, first_existing

READERS = {"chexpert": chexpert, "mimic_cxr": mimic_cxr, "padchest": padchest, "vindr_cxr": vindr_cxr}


def read_source(options: SourceOptions) -> SourceTable:
    """The release's rows, labelled in the canonical order (its module's ``read``)."""
    if options.source not in READERS:
        raise SourceDataError(f"unknown --source {options.source!r}; known: nih, {', '.join(READERS)}")
    return READERS[options.source].read(options)


def listing_file(options: SourceOptions):
    """The file whose lines the table's ``csv_line`` numbers (MIMIC lists images in its metadata file)."""
    return options.metadata_csv if options.source == "mimic_cxr" else options.labels_csv


def select_views(source_table: SourceTable, views: tuple[str, ...] | None) -> pd.DataFrame:
    """The rows whose view is one of ``views`` (all rows without ``--views``); the others are counted."""
    frame = source_table.frame
    if not views:
        return frame
    kept = frame["view_position"].str.upper().isin({view.strip().upper() for view in views})
    source_table.counts["dropped_by_view"] = int((~kept).sum())
    return frame[kept].reset_index(drop=True)


def attach_paths(frame: pd.DataFrame, options: SourceOptions, on_bad_image: str) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` with each image's ``path``; rows whose file is found nowhere are an error, or (``skip``) dropped and
    returned by id."""
    frame = frame.assign(path=[first_existing(candidates) for candidates in frame["candidates"]])
    missing = frame[frame["path"].isna()]
    if len(missing) and on_bad_image == "error":
        raise missing_images_error(missing, listing_file(options), options.images_dir)
    return frame[frame["path"].notna()].reset_index(drop=True), missing["image_id"].tolist()


def assign_splits(frame: pd.DataFrame, seed: int, validation_fraction: float, test_fraction: float) -> np.ndarray:
    """Each row's split: the release's own where it has one (validation carved out of train patient-wise when it has
    none), else patient-wise train / validation / test. Missing labels count as negatives for the stratification."""
    labels = np.nan_to_num(np.asarray(frame["labels"].tolist(), dtype=np.float32).reshape(len(frame), -1))
    patients = frame["patient_id"].to_numpy()
    official = frame["split"].to_numpy(dtype=object)
    if not official.any():
        train = 1.0 - validation_fraction - test_fraction
        fractions = {"train": train, "validation": validation_fraction, "test": test_fraction}
        return patient_wise_split(patients, labels, fractions, seed=seed)
    splits = np.where(official == "", "train", official)
    train = splits == "train"
    if train.any() and not (splits == "validation").any():
        validation = validation_fraction / (1.0 - test_fraction)
        splits[train] = patient_wise_split(
            patients[train], labels[train], {"train": 1.0 - validation, "validation": validation}, seed=seed
        )
    return splits


def generate_examples(records: list[dict], source: str, image_size, on_bad_image: str, listed_in: str):
    """The prepared rows of ``records`` (a shard of them per process); unreadable images follow ``on_bad_image``."""
    for record in records:
        where = f"line {record['csv_line']} of {listed_in}"
        image = read_or_skip(record["path"], image_size, on_bad_image, where)
        if image is not None:
            yield prepared_example(record, image, source)


def build_source_dataset(
    options: SourceOptions,
    *,
    image_size: int | None = None,
    on_bad_image: str = "error",
    split_seed: int = DEFAULT_SPLIT_SEED,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[datasets.DatasetDict, SourceTable, list[str]]:
    """The release's non-empty splits, its table (with its counts) and the ids of the images it listed."""
    source_table = read_source(options)
    frame = select_views(source_table, options.views)
    listed = frame["image_id"].tolist()
    frame, missing = attach_paths(frame, options, on_bad_image)
    source_table.counts["missing_files"] = len(missing)
    frame = frame.assign(split=assign_splits(frame, split_seed, validation_fraction, test_fraction))
    splits = {}
    settings = {"source": options.source, "image_size": image_size, "on_bad_image": on_bad_image}
    settings["listed_in"] = str(listing_file(options))
    for split in SPLITS:
        records = frame[frame["split"] == split].drop(columns=["candidates", "split"]).to_dict("records")
        if not records:
            continue
        splits[split] = datasets.Dataset.from_generator(
            generate_examples,
            features=nih_features(),
            gen_kwargs={"records": records, **settings},
            cache_dir=str(cache_dir) if cache_dir else None,
            num_proc=num_proc if num_proc and len(records) >= num_proc else None,
            split=split,
        )
    if not splits:
        raise SourceDataError(f"no image of {options.labels_csv} is left to prepare (see --views / --on_bad_image)")
    return datasets.DatasetDict(splits), source_table, listed
