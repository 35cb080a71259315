"""A ``datasets`` builder for NIH ChestX-ray14.

datasets >= 4 no longer runs loading scripts, so the builder is run directly::

    builder = NIHChestXray14(config_name="sample", images_dir="images", labels_csv="sample_labels.csv")
    builder.download_and_prepare()
    dataset = builder.as_dataset()  # DatasetDict: train / validation / test

``scripts/prepare_data.py`` wraps this and writes a folder that ``datasets.load_dataset`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
import pandas as pd

from ..constants import LABELS, NUM_LABELS
from .archives import find_archives, iter_archive
from .images import MemberFile, encode_png, load_xray
from .nih import NIHDataError, index_images, multi_hot_matrix, read_image_list, read_labels_csv
from .splits import patient_wise_split

BAD_IMAGE_POLICIES = ("error", "skip")
# Read from archives, every image goes into this one split (one pass over each archive); build_dataset then
# selects train/validation/test from it in the CSV's order (:func:`cxr_vit.data.prepare.build_dataset`).
ARCHIVE_SPLIT = "archives"
DEFAULT_SPLIT_SEED = 42

_DESCRIPTION = (
    "NIH ChestX-ray14: frontal chest X-rays with 14 text-mined finding labels plus 'No Finding', "
    "split patient-wise into train/validation/test."
)
_HOMEPAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
_CITATION = """@inproceedings{wang2017chestxray,
  title={ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised
         Classification and Localization of Common Thorax Diseases},
  author={Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and Bagheri, Mohammadhadi and
          Summers, Ronald M},
  booktitle={CVPR}, year={2017}
}"""
_LICENSE = "NIH Clinical Center release: unrestricted use with attribution (the Kaggle sample is listed as CC0)."


def nih_features() -> datasets.Features:
    """The prepared schema of every source: ``labels`` holds the 15 canonical labels, NaN where a source does not
    annotate one (or an uncertain one under ``--uncertain missing``)."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "labels": datasets.List(datasets.Value("float32"), length=NUM_LABELS),
            "findings": datasets.List(datasets.ClassLabel(names=list(LABELS))),
            "image_id": datasets.Value("string"),
            "patient_id": datasets.Value("int32"),
            "age": datasets.Value("int32"),
            "sex": datasets.Value("string"),
            "view_position": datasets.Value("string"),
            "follow_up": datasets.Value("int32"),
            # Which release the image comes from ("nih", "chexpert", "mimic_cxr", "padchest", "vindr_cxr").
            "source": datasets.Value("string"),
        }
    )


@dataclass
class NIHChestXray14Config(datasets.BuilderConfig):
    """Where the NIH files are and how to split and shrink them.

    Args:
        images_dir: folder with the PNGs (flat, or the full release's ``images_*/images/`` subfolders), or a
            folder of the release's ``images_*.tar.gz`` archives, or one archive: read without extracting.
        labels_csv: ``sample_labels.csv`` or ``Data_Entry_2017*.csv``.
        train_val_list / test_list: the official split lists (``full`` config only); when given, the test
            split is exactly ``test_list`` and validation is carved patient-wise out of ``train_val_list``.
        validation_fraction / test_fraction: patient-wise split fractions of images.
        split_seed: seed of the patient-wise split; the same seed and input give the same split. It is not the
            training seed: a seed study trains on one split.
        image_size: shrink each image once so its shorter side is this many pixels (``None`` keeps it).
        on_bad_image: ``error`` stops at the first missing or unreadable image; ``skip`` leaves such images
            out (the prepare step counts and reports them).
    """

    images_dir: str | None = None
    labels_csv: str | None = None
    train_val_list: str | None = None
    test_list: str | None = None
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = DEFAULT_SPLIT_SEED
    image_size: int | None = None
    on_bad_image: str = "error"


class NIHChestXray14(datasets.GeneratorBasedBuilder):
    """NIH ChestX-ray14 with 15-way multi-hot labels and patient-wise splits."""

    BUILDER_CONFIG_CLASS = NIHChestXray14Config
    BUILDER_CONFIGS = [
        NIHChestXray14Config(name="sample", description="The Kaggle 5,606-image sample or any subset."),
        NIHChestXray14Config(name="full", description="The full 112,120-image release."),
    ]
    DEFAULT_CONFIG_NAME = "sample"

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=_DESCRIPTION,
            features=nih_features(),
            homepage=_HOMEPAGE,
            citation=_CITATION,
            license=_LICENSE,
        )

    def _split_generators(self, dl_manager):
        config = self.config
        if config.images_dir is None or config.labels_csv is None:
            raise NIHDataError("NIHChestXray14 needs images_dir=... and labels_csv=...")
        if config.on_bad_image not in BAD_IMAGE_POLICIES:
            raise NIHDataError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {config.on_bad_image!r}")
        if config.name != "full" and (config.train_val_list or config.test_list):
            raise NIHDataError("train_val_list / test_list are official lists of the full release: use config 'full'")
        frame = read_labels_csv(config.labels_csv)
        archives = find_archives(config.images_dir)
        if archives:
            frame["split"] = self._assign_splits(frame)
            # Which split each image goes to, in CSV order: build_dataset selects the splits with it.
            self.assigned_splits = frame[["image_id", "split", "csv_line"]]
            records = {record["image_id"]: record for record in frame.to_dict("records")}
            gen_kwargs = {"records": records, "archives": [str(archive) for archive in archives]}
            return [datasets.SplitGenerator(name=ARCHIVE_SPLIT, gen_kwargs=gen_kwargs)]
        images = index_images(config.images_dir)
        frame = self._attach_paths(frame, images)
        frame["split"] = self._assign_splits(frame)
        return [
            datasets.SplitGenerator(
                name=split, gen_kwargs={"records": frame[frame["split"] == split].to_dict("records")}
            )
            for split in ("train", "validation", "test")
        ]

    def _attach_paths(self, frame: pd.DataFrame, images: dict) -> pd.DataFrame:
        frame = frame.assign(path=[str(images[name]) if name in images else None for name in frame["image_id"]])
        missing = frame[frame["path"].isna()]
        if len(missing) and self.config.on_bad_image == "error":
            raise missing_images_error(missing, self.config.labels_csv, self.config.images_dir)
        return frame[frame["path"].notna()].reset_index(drop=True)

    def _assign_splits(self, frame: pd.DataFrame) -> np.ndarray:
        config = self.config
        labels = multi_hot_matrix(frame)
        if config.train_val_list or config.test_list:
            if not (config.train_val_list and config.test_list):
                raise NIHDataError("give both train_val_list and test_list, or neither")
            test_names = set(read_image_list(config.test_list))
            train_val_names = set(read_image_list(config.train_val_list))
            in_test = frame["image_id"].isin(test_names).to_numpy()
            unlisted = frame[~in_test & ~frame["image_id"].isin(train_val_names)]
            if len(unlisted):
                raise NIHDataError(
                    f"{len(unlisted)} image(s) are in neither split list, e.g. line "
                    f"{unlisted.iloc[0].csv_line}: {unlisted.iloc[0].image_id}"
                )
            splits = np.full(len(frame), "test", dtype=object)
            rest = ~in_test
            validation = config.validation_fraction / (1.0 - config.test_fraction)
            splits[rest] = patient_wise_split(
                frame["patient_id"].to_numpy()[rest],
                labels[rest],
                {"train": 1.0 - validation, "validation": validation},
                seed=config.split_seed,
            )
            return splits
        train = 1.0 - config.validation_fraction - config.test_fraction
        fractions = {"train": train, "validation": config.validation_fraction, "test": config.test_fraction}
        return patient_wise_split(frame["patient_id"].to_numpy(), labels, fractions, seed=config.split_seed)

    def _generate_examples(self, records, archives=None):
        if archives is None:  # a folder: records is a list with each image's path
            sources = ((record, record["path"]) for record in records)
        else:  # archives (a shard of them per process): records maps image name -> record
            sources = (
                (records[name], MemberFile(data, f"{archive}:{name}"))
                for archive in archives
                for name, data in iter_archive(archive, records)
            )
        for record, source in sources:
            image = read_or_skip(
                source, self.config.image_size, self.config.on_bad_image, f"line {record['csv_line']} of "
                f"{self.config.labels_csv}"
            )  # fmt: skip
            if image is not None:
                yield record["image_id"], prepared_example(record, image, "nih")


def read_or_skip(source, image_size: int | None, on_bad_image: str, where: str):
    """The decoded (and shrunk) image, or None for a bad one under ``on_bad_image='skip'`` (the caller counts it).

    ``where``: the label-file line listing it, for the error.
    """
    try:
        return load_xray(source, image_size)
    except Exception as err:  # PIL and pydicom raise many types for broken files
        if on_bad_image == "skip":
            return None
        raise NIHDataError(
            f"cannot read image {source} ({where}): {type(err).__name__}: {err}. Pass on_bad_image='skip' to "
            "leave such files out."
        ) from err


def prepared_example(record: dict, image, source: str) -> dict:
    """One row of the prepared schema (:func:`nih_features`) from a reader's record and its decoded image."""
    return {
        "image": {"bytes": encode_png(image), "path": record["image_id"]},
        **{name: record[name] for name in ("labels", "findings", "image_id", "patient_id", "age", "sex")},
        "view_position": record["view_position"],
        "follow_up": record["follow_up"],
        "source": source,
    }


def missing_images_error(missing: pd.DataFrame, labels_csv, images_dir) -> NIHDataError:
    """The error for CSV rows (``image_id``, ``csv_line``) whose image is not in ``images_dir``."""
    listed = "\n  ".join(f"line {r.csv_line}: {r.image_id}" for r in missing.head(10).itertuples())
    return NIHDataError(
        f"{len(missing)} image(s) listed in {labels_csv} are not in {images_dir}:"
        f"\n  {listed}\nFix the paths, or pass on_bad_image='skip' to leave them out (they are counted)."
    )
