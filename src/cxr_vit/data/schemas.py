"""ChestX-ray14 as other people published it: any of the common label layouts, mapped to ours by name.

A dataset from the Hub or a local folder (Parquet, Arrow, an image folder) is accepted when it has one Image
column and its 15 labels in one of these forms (names match case-, space- and underscore-insensitively; NIH's
own spellings "Infiltrate" and "Pleural Thickening" are known):

- a list of class indices, ``Sequence(ClassLabel(names=...))``, in any label order (e.g. "No Finding" first);
- a fixed-length multi-hot list whose order a ``ClassLabel`` list feature of the dataset names (cxr-vit's own
  ``labels`` + ``findings``);
- one 0/1 column per label, named after the labels;
- the release's ``Finding Labels`` string (``"Effusion|Mass"``).

Labels become the 15-float multi-hot ``labels`` column in the canonical order; an unknown name is an error that
lists it. Patient ids come from a patient column or, failing that, from NIH file names (``00000013_005.png`` is
patient 13). Missing validation / test splits are carved out of train patient-wise; without patient ids that is
refused, since an image-wise split would put one patient's films on both sides.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute

from ..constants import LABEL2ID, LABELS, NUM_LABELS
from .builder import DEFAULT_SPLIT_SEED
from .local import load_dataset_as_is
from .nih import NIHDataError, parse_age
from .provenance import interrupted_preparation
from .splits import patient_wise_split

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"validation": ("validation", "valid", "val", "dev"), "test": ("test",), "train": ("train",)}
# NIH's own alternative spellings (the box list says "Infiltrate"); everything else must match by name.
LABEL_ALIASES = {"infiltrate": "Infiltration", "nofindings": "No Finding"}
PATIENT_COLUMNS = ("patient_id", "patientid", "patient")
NAME_COLUMNS = ("image_id", "imageindex", "image_index", "filename", "file_name", "path")
METADATA_COLUMNS = {
    "age": ("age", "patientage"),
    "sex": ("sex", "gender", "patientgender"),
    "view_position": ("view_position", "viewposition", "view"),
}
NIH_FILE_NAME = re.compile(r"(\d{8})_(\d{3})\.\w+$")


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


_CANONICAL = {_key(label): label for label in LABELS} | LABEL_ALIASES


def canonical_label(name: str) -> str | None:
    """The canonical label for a published label name, or None if it is not one of the 15."""
    return _CANONICAL.get(_key(name))


def map_label_names(names: Sequence[str], where: str) -> list[int]:
    """Canonical index of each name; raises listing every name that is not one of the 15 labels."""
    unknown = [name for name in names if canonical_label(name) is None]
    if unknown:
        raise NIHDataError(
            f"{where}: unknown label name(s) {unknown}; the 15 ChestX-ray14 labels are: {', '.join(LABELS)}"
        )
    return [LABEL2ID[canonical_label(name)] for name in names]


def _column(features: datasets.Features, candidates: Sequence[str]) -> str | None:
    keys = {_key(name): name for name in features}
    return next((keys[_key(candidate)] for candidate in candidates if _key(candidate) in keys), None)


def _is_canonical(features: datasets.Features) -> bool:
    labels, findings = features.get("labels"), features.get("findings")
    names = getattr(getattr(findings, "feature", None), "names", None)
    return (
        isinstance(features.get("image"), datasets.Image)
        and getattr(labels, "length", None) == NUM_LABELS
        and names == list(LABELS)
    )


class LabelEncoder:
    """Batched ``Dataset.map`` function: one published label layout -> ``{"labels": [15 floats, ...]}``.

    ``kind`` is ``indices`` (lists of class indices), ``multi_hot`` (fixed-length 0/1 lists), ``columns`` (one
    0/1 column per label) or ``string`` ("A|B"); ``order`` maps the layout's positions to canonical indices.
    """

    def __init__(self, kind: str, columns: list[str], order: list[int] | None = None, where: str = ""):
        self.kind, self.columns, self.order, self.where = kind, columns, order, where

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self.kind == "columns":
            rows = zip(*(batch[column] for column in self.columns), strict=True)
            return {"labels": [[float(value) for value in row] for row in rows]}
        values = batch[self.columns[0]]
        if self.kind == "indices":
            return {"labels": [_multi_hot([self.order[i] for i in row]) for row in values]}
        if self.kind == "multi_hot":
            return {"labels": [_scatter(row, self.order) for row in values]}
        return {"labels": [_from_string(text, self.where) for text in values]}


def label_encoder(features: datasets.Features, where: str) -> LabelEncoder:
    """The :class:`LabelEncoder` of the dataset's label layout; raises naming the dataset when there is none."""
    class_lists = {
        name: feature.feature.names
        for name, feature in features.items()
        if isinstance(feature, (datasets.Sequence, datasets.List))
        and isinstance(getattr(feature, "feature", None), datasets.ClassLabel)
    }
    for name, feature in features.items():  # a multi-hot list whose order a ClassLabel list of its size names
        if not isinstance(feature, (datasets.Sequence, datasets.List)) or not isinstance(
            getattr(feature, "feature", None), datasets.Value
        ):
            continue
        namers = [names for names in class_lists.values() if len(names) == getattr(feature, "length", -1)]
        if namers:
            return LabelEncoder("multi_hot", [name], map_label_names(namers[0], f"{where} ('{name}' order)"))
    if len(class_lists) == 1:  # a list of class indices
        (name, names), = class_lists.items()  # fmt: skip
        return LabelEncoder("indices", [name], map_label_names(names, f"{where} ('{name}')"))
    per_label = {canonical_label(name): name for name in features if canonical_label(name) is not None}
    if len(per_label) == NUM_LABELS:  # one 0/1 column per label
        return LabelEncoder("columns", [per_label[label] for label in LABELS])
    findings = _column(features, ("Finding Labels", "finding_labels", "findings"))
    if findings is not None and features[findings] == datasets.Value("string"):
        return LabelEncoder("string", [findings], where=where)
    raise NIHDataError(
        f"{where}: cannot find the 15 labels. Accepted: a Sequence(ClassLabel) column, a multi-hot list named by a "
        f"ClassLabel list, one 0/1 column per label, or a 'Finding Labels' string column; features are {features}"
    )


def _multi_hot(indices: Sequence[int]) -> list[float]:
    vector = [0.0] * NUM_LABELS
    for index in indices:
        vector[index] = 1.0
    return vector


def _scatter(row: Sequence[float], order: Sequence[int]) -> list[float]:
    vector = [0.0] * NUM_LABELS
    for value, index in zip(row, order, strict=True):
        vector[index] = float(value)
    return vector


def _from_string(text: str, where: str) -> list[float]:
    names = [name.strip() for name in str(text).split("|") if name.strip()]
    return _multi_hot(map_label_names(names, where))


def patient_ids(dataset: datasets.Dataset, where: str) -> np.ndarray | None:
    """Patient id of each row: a patient column, else NIH file names (``00000013_005.png``: 13); None if neither."""
    column = _column(dataset.features, PATIENT_COLUMNS)
    if column is not None:
        return np.asarray(dataset[column])
    names = _file_names(dataset)
    if names is None:
        return None
    matches = [NIH_FILE_NAME.search(name or "") for name in names]
    if not all(matches):
        bad = next(name for name, match in zip(names, matches, strict=True) if not match)
        logger.warning("%s: file name %r is not an NIH name (00000013_005.png); no patient ids from names", where, bad)
        return None
    return np.asarray([int(match.group(1)) for match in matches])


def _years(age: str) -> int | None:
    try:
        return parse_age(age)
    except ValueError:
        return None


def _file_names(dataset: datasets.Dataset) -> list[str] | None:
    column = _column(dataset.features, NAME_COLUMNS)
    if column is not None and dataset.features[column] == datasets.Value("string"):
        return [str(name).rsplit("/", 1)[-1] for name in dataset[column]]
    image = next((name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)), None)
    if image is None:
        return None
    # Only the Image column's "path" field, read from Arrow: not the image bytes (gigabytes for the release).
    cells = dataset.select_columns([image]).with_format("arrow")[:][image]
    names = pyarrow.compute.struct_field(cells, "path").to_pylist()
    return None if any(not name for name in names) else [name.rsplit("/", 1)[-1] for name in names]


def _split_name(name: str) -> str:
    """The canonical name of a published split (``valid`` / ``val`` / ``dev`` -> ``validation``)."""
    return next((role for role, aliases in SPLIT_ALIASES.items() if name in aliases), name)


def canonical_splits(
    dataset: datasets.DatasetDict,
    where: str,
    split_seed: int = DEFAULT_SPLIT_SEED,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> datasets.DatasetDict:
    """Every split with cxr-vit's ``image`` + canonical ``labels`` (+ ``patient_id`` and metadata where known).

    A cxr-vit prepared dataset passes through unchanged; any other layout is converted (module docstring). A
    missing ``validation`` / ``test`` split is carved out of ``train`` patient-wise.
    """
    converted = {_split_name(name): _canonical(dataset[name], f"{where}[{name}]") for name in dataset}
    missing = [role for role in ("validation", "test") if role not in converted]
    if missing and "train" in converted:
        converted.update(_carve(converted.pop("train"), missing, where, split_seed, validation_fraction, test_fraction))
    return datasets.DatasetDict(converted)


def load_chestxray14(
    name: str, config: str | None = None, split_seed: int = DEFAULT_SPLIT_SEED
) -> datasets.DatasetDict:
    """``datasets.load_dataset(name, config)`` (a prepared folder, any local dataset folder or a Hub id) in
    cxr-vit's layout (:func:`canonical_splits`); a name that loads nothing, or a folder whose preparation has not
    finished, raises :class:`NIHDataError`."""
    started = interrupted_preparation(name) if Path(name).is_dir() else None
    if started is not None:
        raise NIHDataError(
            f"{name} is only partly prepared: its preparation (pid {started.get('pid', '?')} on "
            f"{started.get('host', '?')}, started {started.get('started', '?')}) was interrupted or is still running. "
            "Run scripts/prepare_data.py (or train.py with --images_dir) with the same arguments to finish it."
        )
    try:
        dataset = load_dataset_as_is(name, config)  # a local folder as it is now, not an earlier one's rows
    except (datasets.exceptions.DatasetNotFoundError, FileNotFoundError) as err:
        raise NIHDataError(
            f"{name!r} is neither a prepared folder nor a reachable Hub dataset ({err}). Prepare one with "
            "scripts/prepare_data.py, or pass --images_dir and --labels_csv."
        ) from err
    return canonical_splits(dataset, name, split_seed)


ALL_SPLITS = "all"


def all_images(dataset: datasets.DatasetDict) -> datasets.Dataset:
    """Every split of ``dataset`` as one split, in split order, with the columns all splits share: an external set is
    usually scored whole."""
    parts = list(dataset.values())
    shared = [name for name in parts[0].column_names if all(name in part.column_names for part in parts)]
    return datasets.concatenate_datasets([part.select_columns(shared) for part in parts])


def select_splits(
    dataset: datasets.DatasetDict, names: Sequence[str], where: str, columns: Sequence[str] = ()
) -> list[datasets.Dataset]:
    """The named splits (:data:`ALL_SPLITS`: every image, :func:`all_images`), each checked to hold an image and the
    15 labels (and ``columns``), else an error naming the dataset, the split and what is missing."""
    from .prepare import check_prepared_features

    selected = []
    for name in names:
        if name == ALL_SPLITS and name not in dataset:
            split = all_images(dataset)
        elif name not in dataset:
            raise NIHDataError(f"{where} has no split {name!r} (it has {list(dataset)}, or {ALL_SPLITS!r} for all)")
        else:
            split = dataset[name]
        check_prepared_features(split, f"{where}[{name}]")
        missing = [column for column in columns if column not in split.column_names]
        if missing:
            raise NIHDataError(f"split {name!r} of {where} has no {missing} column(s): prepare it with cxr-vit")
        selected.append(split)
    return selected


def _canonical(split: datasets.Dataset, where: str) -> datasets.Dataset:
    if _is_canonical(split.features):
        return split
    images = [name for name, feature in split.features.items() if isinstance(feature, datasets.Image)]
    if len(images) != 1:
        raise NIHDataError(f"{where}: expected one Image column, found {images or 'none'} in {list(split.features)}")
    encode = label_encoder(split.features, where)
    labels = split.select_columns(encode.columns).map(
        encode, batched=True, remove_columns=encode.columns, desc=f"labels of {where}"
    )
    converted = split.remove_columns([name for name in ("labels",) if name in split.column_names])
    converted = converted.add_column("labels", labels["labels"])
    converted = converted.cast_column("labels", datasets.List(datasets.Value("float32"), length=NUM_LABELS))
    if images[0] != "image":
        converted = converted.rename_column(images[0], "image")
    ids = None if "patient_id" in converted.column_names else patient_ids(split, where)
    if ids is not None:
        converted = converted.add_column("patient_id", [int(i) for i in ids])
    for target, candidates in METADATA_COLUMNS.items():
        source = _column(converted.features, candidates)
        if source is not None and source != target and target not in converted.column_names:
            converted = converted.rename_column(source, target)
    if converted.features.get("age") == datasets.Value("string"):  # NIH's "060Y" codes
        # Swapped as a column: a map would rewrite every row, image bytes included.
        years = [_years(age) for age in converted["age"]]
        converted = converted.remove_columns("age").add_column("age", years)
    keep = {"image", "labels", "patient_id", "image_id", *METADATA_COLUMNS}
    return converted.remove_columns([name for name in converted.column_names if name not in keep])


def _carve(
    train: datasets.Dataset, roles: list[str], where: str, seed: int, validation_fraction: float, test_fraction: float
) -> dict[str, datasets.Dataset]:
    if "patient_id" not in train.column_names:
        raise NIHDataError(
            f"{where} has no {' / '.join(roles)} split and no patient ids (no patient column, and its file names are "
            "not NIH names like 00000013_005.png): an image-wise split would put one patient's films in train and "
            f"{roles[0]} and inflate the AUC. Add a patient column or the missing split(s)."
        )
    wanted = {"validation": validation_fraction, "test": test_fraction}
    fractions = {"train": 1.0 - sum(wanted[role] for role in roles), **{role: wanted[role] for role in roles}}
    labels = np.asarray(train["labels"], dtype=np.float32)
    assignment = patient_wise_split(np.asarray(train["patient_id"]), labels, fractions, seed=seed)
    logger.info("%s: carved %s out of train patient-wise (split seed %d)", where, " and ".join(roles), seed)
    return {role: train.select(np.flatnonzero(assignment == role)) for role in fractions}
