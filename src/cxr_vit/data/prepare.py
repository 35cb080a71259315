"""Build the NIH dataset once and write it as a folder that ``datasets.load_dataset`` reads.

The folder has the layout ``push_to_hub`` writes (``data/<split>-0000N-of-0000M.parquet`` plus a
``README.md`` whose YAML holds ``dataset_info`` and ``configs``), so the same folder can be uploaded as is
and every feature (Image, the ClassLabel names, the fixed-length label list) survives the round trip. Beside
them, ``prepare.json`` records what the folder was made from (:mod:`cxr_vit.data.provenance`): a folder is
reused only when that record matches the inputs and settings given now.

A preparation marks the folder as incomplete (:data:`PREPARING_MARKER`) before it writes anything and writes
``prepare.json`` last, atomically, then removes the mark: a folder still marked was interrupted (or is being
written by another process) and is never read; the next :func:`ensure_prepared` rebuilds it. That function holds
a file lock on the folder (:mod:`cxr_vit.data.locking`), so concurrent runs wait for one preparation, then reuse it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCardData

from ..cards import render_card
from ..constants import LABELS, SPLITS
from .builder import ARCHIVE_SPLIT, DEFAULT_SPLIT_SEED, NIHChestXray14, missing_images_error
from .locking import exclusive
from .nih import NIHDataError, index_images, read_labels_csv
from .provenance import (
    PREPARE_RECORD,
    PREPARING_MARKER,
    interrupted_preparation,
    mark_preparing,
    prepare_record,
    read_record,
    record_differences,
    source_record,
    write_record,
)
from .sources import (
    READER_POLICIES,
    RELEASE_NAMES,
    SOURCE_CHOICES,
    UNCERTAIN_POLICIES,
    SourceDataError,
    SourceOptions,
    build_source_dataset,
    read_source,
)
from .sources.build import attach_paths, select_views

logger = logging.getLogger(__name__)

MAX_SHARD_BYTES = 500 * 1024**2
LOCK_FILE = ".cxr_vit_prepare.lock"  # beside the marker; never uploaded (push_dataset names the files it sends)


@dataclass
class PrepareArguments:
    """Arguments of ``scripts/prepare_data.py``."""

    images_dir: str = field(
        metadata={
            "help": "Folder of NIH PNGs (flat, or images_*/images/ subfolders), or of the release's images_*.tar.gz "
            "(read without extracting, one process per archive), or one such archive, or a quoted pattern of them."
        }
    )
    labels_csv: str = field(metadata={"help": "sample_labels.csv (Kaggle) or Data_Entry_2017*.csv (full)."})
    output_dir: str = field(metadata={"help": "Where to write the Parquet shards and README.md."})
    config: str = field(default="sample", metadata={"help": "Builder config.", "choices": ["sample", "full"]})
    source: str = field(
        default="nih",
        metadata={
            "help": "Which release images_dir / labels_csv hold: nih (ChestX-ray14), chexpert (train.csv / valid.csv), "
            "mimic_cxr (mimic-cxr-2.0.0-chexpert.csv, with --metadata_csv and --split_csv), padchest "
            "(PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv) or vindr_cxr (image_labels_{train,test}.csv).",
            "choices": list(SOURCE_CHOICES),
        },
    )
    metadata_csv: str | None = field(default=None, metadata={"help": "mimic_cxr: mimic-cxr-2.0.0-metadata.csv."})
    split_csv: str | None = field(
        default=None, metadata={"help": "mimic_cxr: mimic-cxr-2.0.0-split.csv (the official split, used as is)."}
    )
    uncertain: str = field(
        default="missing",
        metadata={
            "help": "chexpert / mimic_cxr: what an uncertain (-1.0) label becomes: missing (skipped by loss and "
            "metrics), negative or positive.",
            "choices": list(UNCERTAIN_POLICIES),
        },
    )
    readers: str = field(
        default="majority",
        metadata={
            "help": "vindr_cxr: a label is positive when most of an image's readers marked it (majority) or one did "
            "(any).",
            "choices": list(READER_POLICIES),
        },
    )
    approximate_labels: bool = field(
        default=False,
        metadata={"help": "Also use the label map's approximations (e.g. CheXpert Lung Lesion -> Mass and Nodule)."},
    )
    views: str | None = field(
        default=None,
        metadata={"help": "Keep only these views, comma-separated (e.g. PA,AP); default: every view, none dropped."},
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Shrink once so the shorter side is this many px (e.g. 256 for 224 training)."},
    )
    split_seed: int = field(
        default=DEFAULT_SPLIT_SEED,
        metadata={"help": "Seed of the patient-wise split (independent of any training seed)."},
    )
    validation_fraction: float = field(default=0.1, metadata={"help": "Fraction of images for validation."})
    test_fraction: float = field(default=0.1, metadata={"help": "Fraction of images for test."})
    train_val_list: str | None = field(default=None, metadata={"help": "Official train_val_list.txt (full)."})
    test_list: str | None = field(default=None, metadata={"help": "Official test_list.txt (full)."})
    on_bad_image: str = field(
        default="error",
        metadata={"help": "Missing/unreadable image: stop, or skip and count.", "choices": ["error", "skip"]},
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes that decode images."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the prepared folder as a Hub dataset."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "namespace/name of that dataset repo."})
    private: bool = field(default=False, metadata={"help": "Create the dataset repo as private."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: HF_TOKEN / login)."})
    overwrite_prepared: bool = field(
        default=False,
        metadata={"help": "Rebuild output_dir when it was prepared from other files or settings (else: an error)."},
    )

    def build_kwargs(self) -> dict:
        """The options of :func:`build_dataset` (not the paths, not the Hub options)."""
        not_build = {"images_dir", "labels_csv", "output_dir", "push_to_hub", "hub_dataset_id", "private", "hub_token"}
        not_build.add("overwrite_prepared")
        kwargs = {key: value for key, value in vars(self).items() if key not in not_build}
        kwargs["views"] = parse_views(self.views)
        return kwargs


def parse_views(views: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``"PA,AP"`` (or a list) -> ``("PA", "AP")``; None or empty keeps every view."""
    if views is None:
        return None
    parts = views.split(",") if isinstance(views, str) else list(views)
    return tuple(part.strip().upper() for part in parts if part.strip()) or None


class StalePreparedDataError(NIHDataError):
    """A prepared folder exists but was made from other inputs or settings; the message says what differs."""


@dataclass
class PrepareReport:
    """What went in and what came out: the counts always add up to the CSV's rows."""

    csv_rows: int
    split_rows: dict[str, int]
    skipped: list[str] = field(default_factory=list)
    # Images in the folder that the CSV does not list: ignored (a subset CSV is normal), but counted (None: read
    # from archives, whose other members are passed over uncounted).
    num_unlisted: int | None = 0
    # Labels with no positive image in some split: {label: {split: positives}}. Their AUC is undefined there.
    labels_without_positives: dict[str, dict[str, int]] = field(default_factory=dict)
    reused: bool = False
    source: str = "nih"
    # The canonical labels this release annotates with the options given; the others are NaN in every row.
    annotated_labels: tuple[str, ...] = LABELS
    # What the reader counted (uncertain values, rows without labels, views dropped, missing files, readers...).
    counts: dict[str, int] = field(default_factory=dict)
    unknown_labels: dict[str, int] = field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


def build_dataset(
    images_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    config: str = "sample",
    image_size: int | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    on_bad_image: str = "error",
    train_val_list: str | None = None,
    test_list: str | None = None,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    source: str = "nih",
    metadata_csv: str | None = None,
    split_csv: str | None = None,
    uncertain: str = "missing",
    readers: str = "majority",
    approximate_labels: bool = False,
    views: tuple[str, ...] | None = None,
) -> tuple[datasets.DatasetDict, PrepareReport]:
    """Run the builder (NIH) or the release's reader (:mod:`cxr_vit.data.sources`) and return the splits with a
    report of what was kept and skipped. Another release gives only its non-empty splits."""
    common = {"image_size": image_size, "on_bad_image": on_bad_image, "num_proc": num_proc, "cache_dir": cache_dir}
    if source != "nih":
        options = source_options(
            source, images_dir, labels_csv, metadata_csv, split_csv, uncertain, readers, approximate_labels, views
        )
        fractions = {"validation_fraction": validation_fraction, "test_fraction": test_fraction}
        return build_release(options, split_seed=split_seed, **fractions, **common)
    if metadata_csv or split_csv or views or approximate_labels:
        raise NIHDataError(
            "--metadata_csv, --split_csv, --views and --approximate_labels are options of the other releases "
            "(--source chexpert / mimic_cxr / padchest / vindr_cxr); NIH ChestX-ray14 needs none of them"
        )
    builder = NIHChestXray14(
        config_name=config,
        cache_dir=str(cache_dir) if cache_dir else None,
        images_dir=str(images_dir),
        labels_csv=str(labels_csv),
        image_size=image_size,
        split_seed=split_seed,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        on_bad_image=on_bad_image,
        train_val_list=train_val_list,
        test_list=test_list,
    )
    try:
        builder.download_and_prepare(num_proc=num_proc)
    except datasets.exceptions.DatasetGenerationError as err:
        # datasets wraps generator errors; the user needs ours (file and CSV line), not the wrapper's.
        cause = err.__cause__
        while cause is not None and not isinstance(cause, NIHDataError):
            cause = cause.__cause__
        raise (cause or err) from None
    dataset = builder.as_dataset()
    from_archives = ARCHIVE_SPLIT in dataset
    if from_archives:
        dataset = select_archive_splits(
            dataset[ARCHIVE_SPLIT], builder.assigned_splits, labels_csv, images_dir, on_bad_image
        )
    listed = read_labels_csv(labels_csv)["image_id"]
    kept = {name for split in dataset.values() for name in split["image_id"]}
    report = PrepareReport(
        csv_rows=len(listed),
        split_rows={split: dataset[split].num_rows for split in SPLITS},
        skipped=sorted(set(listed) - kept),
        num_unlisted=None if from_archives else len(set(index_images(images_dir)) - set(listed)),
        labels_without_positives=labels_without_positives(positive_counts(dataset)),
    )
    return dataset, report


def source_options(
    source, images_dir, labels_csv, metadata_csv, split_csv, uncertain, readers, approximate_labels, views
) -> SourceOptions:
    """The reader options, refusing files that belong to another release's reader."""
    if source not in RELEASE_NAMES or source == "nih":
        raise SourceDataError(f"unknown --source {source!r}; known: {', '.join(SOURCE_CHOICES)}")
    if source != "mimic_cxr" and (metadata_csv or split_csv):
        raise SourceDataError(
            f"--metadata_csv / --split_csv are MIMIC-CXR-JPG files; --source {source} reads only --labels_csv"
        )
    return SourceOptions(
        source, images_dir, labels_csv, metadata_csv, split_csv, uncertain, readers, approximate_labels, views
    )


def build_release(options: SourceOptions, **kwargs) -> tuple[datasets.DatasetDict, PrepareReport]:
    """:func:`build_dataset` for another release: its splits and the report of what was kept."""
    dataset, source_table, listed = build_source_dataset(options, **kwargs)
    kept = {name for split in dataset.values() for name in split["image_id"]}
    annotated = source_table.annotated_labels
    report = PrepareReport(
        csv_rows=len(listed),
        split_rows={split: dataset[split].num_rows for split in dataset},
        skipped=sorted(set(listed) - kept),
        num_unlisted=None,  # a release folder holds other files (reports, other versions): not counted
        labels_without_positives=labels_without_positives(positive_counts(dataset), annotated),
        source=options.source,
        annotated_labels=annotated,
        counts=source_table.counts,
        unknown_labels=source_table.unknown_labels,
    )
    return dataset, report


def select_archive_splits(
    whole: datasets.Dataset, assigned, labels_csv, images_dir, on_bad_image: str
) -> datasets.DatasetDict:
    """The splits of the images read from archives, each in CSV order: what a folder's preparation writes.

    ``assigned``: the builder's ``image_id`` / ``split`` / ``csv_line`` frame. An image found in two archives, or
    (with ``on_bad_image='error'``) a listed image found in none, is an error naming it.
    """
    position: dict[str, int] = {}
    duplicates = []
    for index, name in enumerate(whole["image_id"]):
        if name in position:
            duplicates.append(name)
        position[name] = index
    if duplicates:
        raise NIHDataError(
            f"{len(duplicates)} image(s) are in more than one archive of {images_dir}, e.g. {duplicates[0]}: keep "
            "one copy of each archive"
        )
    found = assigned["image_id"].isin(position)
    if on_bad_image == "error" and not found.all():
        raise missing_images_error(assigned[~found], labels_csv, images_dir)
    return datasets.DatasetDict(
        {
            split: whole.select(
                [position[name] for name in assigned["image_id"][found & (assigned["split"] == split)]]
            ).flatten_indices()
            for split in SPLITS
        }
    )


def positive_counts(splits) -> dict[str, np.ndarray]:
    """Positive images per label (canonical order) of each split of a ``DatasetDict`` / dict of splits (a missing
    label, NaN, is not a positive)."""
    return {
        name: np.nansum(np.asarray(split["labels"], dtype=np.float32).reshape(-1, len(LABELS)), axis=0)
        for name, split in splits.items()
    }


def labels_without_positives(
    counts: dict[str, np.ndarray], annotated: tuple[str, ...] = LABELS
) -> dict[str, dict[str, int]]:
    """``{label: {split: positives, ...}}`` for each ``annotated`` label without a positive image in some split."""
    return {
        label: {split: int(values[index]) for split, values in counts.items()}
        for index, label in enumerate(LABELS)
        if label in annotated and any(values[index] == 0 for values in counts.values())
    }


def describe_missing_positives(missing: dict[str, dict[str, int]]) -> str:
    """One line naming each label without positives somewhere, with its positives per split."""
    return "; ".join(
        f"{label} ({', '.join(f'{split} {count}' for split, count in counts.items())})"
        for label, counts in missing.items()
    )


def label_count_table(dataset: datasets.DatasetDict, annotated: tuple[str, ...] = LABELS) -> str:
    """Markdown table: positive images per label (canonical order) and split; a label the source does not annotate
    says so instead of a count."""
    splits = [split for split in SPLITS if split in dataset]
    counts = positive_counts({split: dataset[split] for split in splits})
    header = "| label | " + " | ".join(splits) + " |\n|---|" + "---:|" * len(splits)
    rows = [
        f"| {label} | "
        + " | ".join(str(int(counts[s][i])) if label in annotated else "not annotated" for s in splits)
        + " |"
        for i, label in enumerate(LABELS)
    ]
    totals = "| **images** | " + " | ".join(str(dataset[s].num_rows) for s in splits) + " |"
    patients = "| **patients** | " + " | ".join(str(len(set(dataset[s]["patient_id"]))) for s in splits) + " |"
    return "\n".join([header, *rows, totals, patients])


def write_prepared(
    dataset: datasets.DatasetDict,
    output_dir: str | os.PathLike,
    report: PrepareReport,
    card_values: dict,
) -> Path:
    """Write Parquet shards and the dataset card into ``output_dir``."""
    output_dir = Path(output_dir)
    data_dir = output_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for old in data_dir.glob("*.parquet"):
        old.unlink()  # a re-run with other settings must not leave stale shards behind
    split_dict = datasets.SplitDict()
    splits = [split for split in SPLITS if split in dataset]  # another release may have no train split, say
    for split in splits:
        part = dataset[split]
        num_shards = max(1, math.ceil(part.data.nbytes / MAX_SHARD_BYTES))
        for index in range(num_shards):
            shard = part.shard(num_shards, index, contiguous=True)
            shard.to_parquet(str(data_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"))
        split_dict.add(datasets.SplitInfo(name=split, num_examples=part.num_rows, num_bytes=part.data.nbytes))
    info = datasets.DatasetInfo(features=dataset[splits[0]].features, splits=split_dict)
    nih = report.source == "nih"
    name = RELEASE_NAMES[report.source]
    card_data = DatasetCardData(
        license="other",
        task_categories=["image-classification"],
        tags=["medical", "chest-x-ray", "multi-label-classification", report.source.replace("_", "-")]
        if not nih
        else ["medical", "chest-x-ray", "multi-label-classification", "nih-chestxray14"],
        pretty_name=f"{name} (cxr-vit prepared{'' if nih else ', ChestX-ray14 labels'})",
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    data_files = [{"split": split, "path": f"data/{split}-*"} for split in splits]
    MetadataConfigs({"default": {"data_files": data_files}}).to_dataset_card_data(card_data)
    card = render_card(
        "dataset_card",
        card_data,
        template="README.md" if nih else "external.md",
        label_table=label_count_table(dataset, report.annotated_labels),
        csv_rows=report.csv_rows,
        split_rows=report.split_rows,
        num_skipped=report.num_skipped,
        skipped_examples=report.skipped[:20],
        num_unlisted=report.num_unlisted,
        labels_without_positives=report.labels_without_positives,
        release_name=name,
        source=report.source,
        annotated_labels=report.annotated_labels,
        counts=report.counts,
        unknown_labels=dict(list(report.unknown_labels.items())[:30]),
        num_unknown_labels=len(report.unknown_labels),
        **card_values,
    )
    card.save(output_dir / "README.md")
    return output_dir


def prepare_dataset(
    images_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    record: dict | None = None,
    **build_kwargs,
) -> PrepareReport:
    """Build, then write ``output_dir`` (load it with ``datasets.load_dataset(output_dir)``) and its record.

    ``record``: the :mod:`cxr_vit.data.provenance` record of these inputs and settings, when the caller already
    made it (it reads the label CSV and walks the image folder). The builder's Arrow cache lives in a temporary
    folder, so nothing but ``output_dir`` is left on disk.
    """
    record = record or _record_for(images_dir, labels_csv, build_kwargs)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    mark_preparing(output_dir)
    with tempfile.TemporaryDirectory(prefix="cxr_vit_build_") as cache_dir:
        dataset, report = build_dataset(images_dir, labels_csv, cache_dir=cache_dir, **build_kwargs)
        card_values = {
            "config": build_kwargs.get("config", "sample"),
            "split_seed": build_kwargs.get("split_seed", DEFAULT_SPLIT_SEED),
            "image_size": build_kwargs.get("image_size"),
            "on_bad_image": build_kwargs.get("on_bad_image", "error"),
            "official_lists": bool(build_kwargs.get("test_list")),
            "labels_csv_name": Path(labels_csv).name,
            "options": label_options(build_kwargs),
        }
        write_prepared(dataset, output_dir, report, card_values)
    write_record(output_dir, {**record, **outcome_record(report, build_kwargs)})
    (output_dir / PREPARING_MARKER).unlink()  # complete: the record is in place
    logger.info("wrote %s: %s, %d skipped", output_dir, report.split_rows, report.num_skipped)
    if report.labels_without_positives:
        logger.warning(
            "no positive image in some split for: %s", describe_missing_positives(report.labels_without_positives)
        )
    return report


def label_options(build_kwargs: dict) -> dict:
    """How the labels were read (None where an option does not apply to the release): the record's ``options``."""
    source = build_kwargs.get("source", "nih")
    return {
        "uncertain": build_kwargs.get("uncertain", "missing") if source in ("chexpert", "mimic_cxr") else None,
        "readers": build_kwargs.get("readers", "majority") if source == "vindr_cxr" else None,
        "approximate_labels": bool(build_kwargs.get("approximate_labels", False)),
        "views": list(build_kwargs["views"]) if build_kwargs.get("views") else None,
    }


def outcome_record(report: PrepareReport, build_kwargs: dict) -> dict:
    """What ``prepare.json`` says about the result: the release, the labels it annotates, the options, the counts of
    what was kept, the unknown label strings with their image counts, and the skips."""
    return {
        "source": report.source,
        "annotated_labels": list(report.annotated_labels),
        "options": label_options(build_kwargs),
        "counts": {"listed": report.csv_rows, **report.counts, "kept": sum(report.split_rows.values())},
        "unknown_labels": report.unknown_labels,
        "splits": report.split_rows,
        "skipped": report.num_skipped,
        "skipped_images": report.skipped[:1000],
    }


def _record_for(images_dir, labels_csv, build_kwargs: dict) -> dict:
    source = build_kwargs.get("source", "nih")
    if source != "nih":
        return _release_record(images_dir, labels_csv, build_kwargs)
    parameters = {
        "config": "sample",
        "image_size": None,
        "split_seed": DEFAULT_SPLIT_SEED,
        "validation_fraction": 0.1,
        "test_fraction": 0.1,
        "on_bad_image": "error",
        **build_kwargs,
    }
    return prepare_record(
        images_dir, labels_csv, parameters, build_kwargs.get("train_val_list"), build_kwargs.get("test_list")
    )


def _release_record(images_dir, labels_csv, build_kwargs: dict) -> dict:
    """The provenance record of another release: its label files' hashes and the image files it would use."""
    options = source_options(
        build_kwargs.get("source"), images_dir, labels_csv, build_kwargs.get("metadata_csv"),
        build_kwargs.get("split_csv"), build_kwargs.get("uncertain", "missing"),
        build_kwargs.get("readers", "majority"), build_kwargs.get("approximate_labels", False),
        build_kwargs.get("views"),
    )  # fmt: skip
    frame = select_views(read_source(options), options.views)
    frame, _ = attach_paths(frame, options, "skip")  # the files there now; missing ones are reported by the build
    parameters = {
        "config": None, "image_size": None, "split_seed": DEFAULT_SPLIT_SEED, "validation_fraction": 0.1,
        "test_fraction": 0.1, "on_bad_image": "error", **build_kwargs, "images_dir": images_dir,
        **label_options(build_kwargs),
    }  # fmt: skip
    inputs = {"labels_csv": labels_csv, "metadata_csv": options.metadata_csv, "split_csv": options.split_csv}
    return source_record(dict(zip(frame["image_id"], frame["path"], strict=True)), inputs, parameters)


def check_prepared_features(dataset: datasets.Dataset, name: str) -> None:
    """Fail early, naming the dataset, when it lacks what training needs (an image and 15 labels)."""
    features = dataset.features
    problems = []
    if not isinstance(features.get("image"), datasets.Image):
        problems.append("no 'image' column of type Image")
    labels = features.get("labels")
    if getattr(labels, "length", None) != len(LABELS):
        problems.append(f"'labels' must be a list of {len(LABELS)} floats in the canonical order, got {labels}")
    if problems:
        raise NIHDataError(f"{name} is not a cxr-vit prepared dataset: {'; '.join(problems)}")


def ensure_prepared(
    output_dir: str | os.PathLike,
    images_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    overwrite: bool = False,
    **build_kwargs,
) -> PrepareReport | None:
    """Prepare ``output_dir`` from the NIH files, or reuse it if it was prepared from exactly these.

    Reused (returns None) when its ``prepare.json`` matches the inputs and settings given now. A folder made from
    anything else raises :class:`StalePreparedDataError` saying what differs, unless ``overwrite``, which
    rebuilds it (its image caches too). A folder whose preparation was interrupted is rebuilt. Returns the
    report of a new preparation. Runs under the folder's lock: a second process waits, then reuses.
    """
    output_dir = Path(output_dir)
    with exclusive(output_dir / LOCK_FILE, f"preparing {output_dir}"):
        clear_interrupted(output_dir)
        return _ensure_prepared(output_dir, images_dir, labels_csv, overwrite, build_kwargs)


def clear_interrupted(output_dir: Path) -> None:
    """Remove what an interrupted preparation left in ``output_dir`` (call it holding the folder's lock)."""
    started = interrupted_preparation(output_dir)
    if started is None:
        return
    logger.warning(
        "%s holds an unfinished preparation (pid %s on %s, started %s): it was interrupted; rebuilding it",
        output_dir, started.get("pid", "?"), started.get("host", "?"), started.get("started", "?"),
    )  # fmt: skip
    for partial in [*(output_dir / "data").glob("*.parquet"), output_dir / "README.md", output_dir / PREPARE_RECORD]:
        partial.unlink(missing_ok=True)
    shutil.rmtree(output_dir / "cache", ignore_errors=True)
    (output_dir / PREPARING_MARKER).unlink()


def _ensure_prepared(
    output_dir: Path, images_dir: str | os.PathLike, labels_csv: str | os.PathLike, overwrite: bool, build_kwargs: dict
) -> PrepareReport | None:
    current = None
    if (output_dir / "README.md").is_file() or (output_dir / PREPARE_RECORD).is_file():
        recorded = read_record(output_dir)
        current = _record_for(images_dir, labels_csv, build_kwargs)
        if recorded is None:
            differences = [f"it has no {PREPARE_RECORD} (made by an older cxr-vit or by hand)"]
        else:
            differences = record_differences(recorded, current)
        if not differences:
            logger.info("using the prepared dataset in %s (same inputs and settings)", output_dir)
            return None
        if not overwrite:
            raise StalePreparedDataError(
                f"{output_dir} was prepared from other inputs or settings: {'; '.join(differences)}. Use a new "
                "folder, or pass --overwrite_prepared to rebuild it."
            )
        logger.warning("rebuilding %s (--overwrite_prepared): %s", output_dir, "; ".join(differences))
        for stale in (output_dir / "cache", output_dir / PREPARE_RECORD, output_dir / "README.md"):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    logger.info("preparing %s from %s and %s", output_dir, images_dir, labels_csv)
    return prepare_dataset(images_dir, labels_csv, output_dir, record=current, **build_kwargs)
