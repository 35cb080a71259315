"""Build the NIH dataset once and write it as a folder that ``datasets.load_dataset`` reads.

The folder has the layout ``push_to_hub`` writes (``data/<split>-0000N-of-0000M.parquet`` plus a
``README.md`` whose YAML holds ``dataset_info`` and ``configs``), so the same folder can be uploaded as is
and every feature (Image, the ClassLabel names, the fixed-length label list) survives the round trip.
"""

from __future__ import annotations

import logging
import math
import os
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
from .builder import NIHChestXray14
from .nih import NIHDataError, index_images, read_labels_csv

logger = logging.getLogger(__name__)

MAX_SHARD_BYTES = 500 * 1024**2


@dataclass
class PrepareArguments:
    """Arguments of ``scripts/prepare_data.py``."""

    images_dir: str = field(metadata={"help": "Folder of NIH PNGs (flat, or images_*/images/ subfolders)."})
    labels_csv: str = field(metadata={"help": "sample_labels.csv (Kaggle) or Data_Entry_2017*.csv (full)."})
    output_dir: str = field(metadata={"help": "Where to write the Parquet shards and README.md."})
    config: str = field(default="sample", metadata={"help": "Builder config.", "choices": ["sample", "full"]})
    image_size: int | None = field(
        default=None,
        metadata={"help": "Shrink once so the shorter side is this many px (e.g. 256 for 224 training)."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the patient-wise split."})
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

    def build_kwargs(self) -> dict:
        """The options of :func:`build_dataset` (not the paths, not the Hub options)."""
        not_build = {"images_dir", "labels_csv", "output_dir", "push_to_hub", "hub_dataset_id", "private", "hub_token"}
        return {key: value for key, value in vars(self).items() if key not in not_build}


@dataclass
class PrepareReport:
    """What went in and what came out: the counts always add up to the CSV's rows."""

    csv_rows: int
    split_rows: dict[str, int]
    skipped: list[str] = field(default_factory=list)
    # Images in the folder that the CSV does not list: ignored (a subset CSV is normal), but counted.
    num_unlisted: int = 0

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


def build_dataset(
    images_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    config: str = "sample",
    image_size: int | None = None,
    seed: int = 42,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    on_bad_image: str = "error",
    train_val_list: str | None = None,
    test_list: str | None = None,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[datasets.DatasetDict, PrepareReport]:
    """Run the builder and return the splits with a report of skipped images."""
    builder = NIHChestXray14(
        config_name=config,
        cache_dir=str(cache_dir) if cache_dir else None,
        images_dir=str(images_dir),
        labels_csv=str(labels_csv),
        image_size=image_size,
        seed=seed,
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
    listed = read_labels_csv(labels_csv)["image_id"]
    kept = {name for split in dataset.values() for name in split["image_id"]}
    report = PrepareReport(
        csv_rows=len(listed),
        split_rows={split: dataset[split].num_rows for split in SPLITS},
        skipped=sorted(set(listed) - kept),
        num_unlisted=len(set(index_images(images_dir)) - set(listed)),
    )
    return dataset, report


def label_count_table(dataset: datasets.DatasetDict) -> str:
    """Markdown table: positive images per label (canonical order) and split."""
    counts = {split: np.asarray(dataset[split]["labels"]).reshape(-1, len(LABELS)).sum(0) for split in SPLITS}
    header = "| label | " + " | ".join(SPLITS) + " |\n|---|" + "---:|" * len(SPLITS)
    rows = [
        f"| {label} | " + " | ".join(str(int(counts[s][i])) for s in SPLITS) + " |" for i, label in enumerate(LABELS)
    ]
    totals = "| **images** | " + " | ".join(str(dataset[s].num_rows) for s in SPLITS) + " |"
    patients = "| **patients** | " + " | ".join(str(len(set(dataset[s]["patient_id"]))) for s in SPLITS) + " |"
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
    for split in SPLITS:
        part = dataset[split]
        num_shards = max(1, math.ceil(part.data.nbytes / MAX_SHARD_BYTES))
        for index in range(num_shards):
            shard = part.shard(num_shards, index, contiguous=True)
            shard.to_parquet(str(data_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"))
        split_dict.add(datasets.SplitInfo(name=split, num_examples=part.num_rows, num_bytes=part.data.nbytes))
    info = datasets.DatasetInfo(features=dataset["train"].features, splits=split_dict)
    card_data = DatasetCardData(
        license="other",
        task_categories=["image-classification"],
        tags=["medical", "chest-x-ray", "multi-label-classification", "nih-chestxray14"],
        pretty_name="NIH ChestX-ray14 (cxr-vit prepared)",
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    data_files = [{"split": split, "path": f"data/{split}-*"} for split in SPLITS]
    MetadataConfigs({"default": {"data_files": data_files}}).to_dataset_card_data(card_data)
    card = render_card(
        "dataset_card",
        card_data,
        label_table=label_count_table(dataset),
        csv_rows=report.csv_rows,
        split_rows=report.split_rows,
        num_skipped=report.num_skipped,
        skipped_examples=report.skipped[:20],
        num_unlisted=report.num_unlisted,
        **card_values,
    )
    card.save(output_dir / "README.md")
    return output_dir


def prepare_dataset(
    images_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    output_dir: str | os.PathLike,
    **build_kwargs,
) -> PrepareReport:
    """Build, then write ``output_dir`` (load it with ``datasets.load_dataset(output_dir)``).

    The builder's Arrow cache lives in a temporary folder, so nothing but ``output_dir`` is left on disk.
    """
    with tempfile.TemporaryDirectory(prefix="cxr_vit_build_") as cache_dir:
        dataset, report = build_dataset(images_dir, labels_csv, cache_dir=cache_dir, **build_kwargs)
        card_values = {
            "config": build_kwargs.get("config", "sample"),
            "seed": build_kwargs.get("seed", 42),
            "image_size": build_kwargs.get("image_size"),
            "on_bad_image": build_kwargs.get("on_bad_image", "error"),
            "official_lists": bool(build_kwargs.get("test_list")),
            "labels_csv_name": Path(labels_csv).name,
        }
        write_prepared(dataset, output_dir, report, card_values)
    logger.info("wrote %s: %s, %d skipped", output_dir, report.split_rows, report.num_skipped)
    return report


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
    output_dir: str | os.PathLike, images_dir: str | os.PathLike, labels_csv: str | os.PathLike, **build_kwargs
) -> None:
    """Prepare ``output_dir`` from the NIH files unless a prepared dataset (its README.md) is already there."""
    if (Path(output_dir) / "README.md").is_file():
        logger.info("using the prepared dataset in %s", output_dir)
        return
    logger.info("preparing %s from %s and %s", output_dir, images_dir, labels_csv)
    prepare_dataset(images_dir, labels_csv, output_dir, **build_kwargs)
