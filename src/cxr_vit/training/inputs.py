"""The training run's inputs: the prepared (or published) splits per role, and the datasets the Trainer reads.

Both input pipelines feed the same uint8 squares (:func:`cxr_vit.data.transforms.resize_for_model`) to the same
device transform (:class:`cxr_vit.data.gpu_augment.BatchImageTransform`), so they train and evaluate alike:
``cache`` decodes each split once into a uint8 memmap (built by the main process, reused while it matches) and
reads a sorted batch at a time; ``datasets`` decodes per image in the DataLoader workers.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import datasets

from ..constants import DEFAULT_SOURCE, NUM_LABELS, SOURCE_COLUMN
from ..data import (
    describe_missing_positives,
    ensure_prepared,
    labels_without_positives,
    load_chestxray14,
    positive_counts,
    select_splits,
)
from ..data.cache import default_cache_dir, ensure_cache
from ..data.cached_dataset import CachedImageDataset, collate_batch
from ..data.gpu_augment import BatchImageTransform
from ..data.intensity import IntensityAugment
from ..data.transforms import ModelImages, collate_images, eval_geometry
from ..evaluation.external import dataset_sources
from .config import CXRTrainingArguments, DataArguments

logger = logging.getLogger(__name__)


def load_splits(data_args: DataArguments, training_args: CXRTrainingArguments) -> dict[str, datasets.Dataset]:
    """``{"train": ..., "eval": ..., "test": ...}`` (roles whose split is not ``none``), prepared first when
    ``--images_dir`` is given; labels without a positive image in some split are named in a warning.

    Several ``--dataset_name``: each role is the union of the sources' splits (:func:`union_of_sources`), and
    ``eval/<source>`` / ``test/<source>`` hold each source's own split, scored apart as well.
    """
    if data_args.images_dir:
        with training_args.main_process_first(desc="prepare dataset"):
            ensure_prepared(
                data_args.dataset_name[0],
                data_args.images_dir,
                data_args.labels_csv,
                overwrite=data_args.overwrite_prepared,
                config=data_args.prepare_config,
                image_size=data_args.prepare_image_size,
                split_seed=data_args.split_seed,
                train_val_list=data_args.train_val_list,
                test_list=data_args.test_list,
            )
    wanted = {"train": data_args.train_split, "eval": data_args.eval_split, "test": data_args.test_split}
    wanted = {role: name for role, name in wanted.items() if name is not None}
    per_dataset = []
    for name in data_args.dataset_name:
        dataset = load_chestxray14(name, data_args.dataset_config_name, data_args.split_seed)
        selected = select_splits(dataset, list(wanted.values()), name)
        splits = {}
        for role, split in zip(wanted, selected, strict=True):
            limit = data_args.max_train_samples if role == "train" else data_args.max_eval_samples
            splits[role] = split.select(range(min(limit, len(split)))) if limit else split
        per_dataset.append(splits)
    splits = per_dataset[0] if len(per_dataset) == 1 else union_of_sources(per_dataset, data_args.dataset_name)
    missing = labels_without_positives(positive_counts({role: splits[role] for role in wanted}))
    if missing:
        logger.warning(
            "labels without a positive image in some split (no AUC there, left out of its macro): %s",
            describe_missing_positives(missing),
        )
    return splits


SOURCE_ROLE_SEPARATOR = "/"  # eval/<source>, test/<source>


def source_names(per_dataset: list[dict[str, datasets.Dataset]]) -> list[str]:
    """One name per dataset for its metrics (``eval_<name>_auc_macro``): its source, numbered when two share one."""
    sources = ["+".join(dataset_sources(next(iter(splits.values())))) for splits in per_dataset]
    return [
        source if sources.count(source) == 1 else f"{source}{sources[: index + 1].count(source)}"
        for index, source in enumerate(sources)
    ]


def union_of_sources(per_dataset: list[dict[str, datasets.Dataset]], names: list[str]) -> dict[str, datasets.Dataset]:
    """Each role's splits of several datasets as one (image, labels and a ``source`` column), plus
    each source's own evaluation splits as ``eval/<source>`` and ``test/<source>``."""
    sources = source_names(per_dataset)
    for name, source in zip(names, sources, strict=True):
        logger.info("training source %s: %s", source, name)
    union = {}
    for role in per_dataset[0]:
        parts = [_with_source(splits[role]) for splits in per_dataset]
        union[role] = datasets.concatenate_datasets(parts)
        if role != "train":
            for source, part in zip(sources, parts, strict=True):
                union[f"{role}{SOURCE_ROLE_SEPARATOR}{source}"] = part
    return union


def _with_source(split: datasets.Dataset) -> datasets.Dataset:
    """What training reads of every source: the image, the labels as 15 floats (NaN: missing), and the source."""
    sources = split[SOURCE_COLUMN] if SOURCE_COLUMN in split.column_names else [DEFAULT_SOURCE] * len(split)
    split = split.select_columns(["image", "labels"]).add_column(SOURCE_COLUMN, sources)
    features = {"image": datasets.Image(), "labels": datasets.List(datasets.Value("float32"), length=NUM_LABELS)}
    return split.cast(datasets.Features({**features, SOURCE_COLUMN: datasets.Value("string")}))


def per_source(role_datasets: dict, role: str) -> dict:
    """``{source: dataset}`` of a role's per-source datasets (``eval/<source>``); empty for a run on one source."""
    prefix = f"{role}{SOURCE_ROLE_SEPARATOR}"
    return {name.removeprefix(prefix): dataset for name, dataset in role_datasets.items() if name.startswith(prefix)}


def training_sources(splits: dict[str, datasets.Dataset]) -> list[str]:
    """The sources of the training split, for the model's config (:data:`cxr_vit.evaluation.external.SOURCES_KEY`)."""
    return dataset_sources(splits["train"])


def input_datasets(
    splits: dict[str, datasets.Dataset],
    data_args: DataArguments,
    training_args: CXRTrainingArguments,
    model_data_config: dict,
) -> tuple[dict, Callable, BatchImageTransform]:
    """Per-role datasets of uint8 squares, their collator, and the batch transform the Trainer runs on the device."""
    geometry = eval_geometry(model_data_config)
    intensity = IntensityAugment.from_args(
        training_args.aug_ops, training_args.aug_magnitude, training_args.aug_num_ops
    )
    batch_transform = BatchImageTransform(model_data_config, intensity=intensity)
    if training_args.input_pipeline == "datasets":
        squares = ModelImages(geometry)
        return {role: split.with_transform(squares) for role, split in splits.items()}, collate_images, batch_transform
    cached = {}
    with training_args.main_process_first(desc="image cache"):
        for role, split in splits.items():
            directory = cache_dir(role, data_args, geometry)
            cached[role] = CachedImageDataset(ensure_cache(split, directory, geometry))
            logger.info("%s: %d images cached at %d px in %s", role, len(split), geometry.resize_size, directory)
    return cached, collate_batch, batch_transform


def cache_dir(role: str, data_args: DataArguments, geometry) -> Path:
    """Where a role's image cache lives: beside its dataset; for several sources beside the first, named by the
    split and all the sources' names (the union) or by the source (``eval/<source>``). A cache is reused only when
    it holds the same images and labels (:func:`cxr_vit.data.cache.ensure_cache`)."""
    base, _, source = role.partition(SOURCE_ROLE_SEPARATOR)
    split_name, names = getattr(data_args, f"{base}_split"), data_args.dataset_name
    if source:
        split_name = f"{split_name}-{source}"
    elif len(names) > 1:
        split_name = f"{split_name}-union-{hashlib.sha1(chr(10).join(names).encode()).hexdigest()[:8]}"
    return default_cache_dir(names[0], split_name, geometry, data_args.image_cache_dir)
