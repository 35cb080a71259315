"""The training run's inputs: the prepared (or published) splits per role, and the datasets the Trainer reads.

Both input pipelines feed the same uint8 squares (:func:`cxr_vit.data.transforms.resize_for_model`) to the same
device transform (:class:`cxr_vit.data.gpu_augment.BatchImageTransform`), so they train and evaluate alike:
``cache`` decodes each split once into a uint8 memmap (built by the main process, reused while it matches) and
reads a sorted batch at a time; ``datasets`` decodes per image in the DataLoader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import datasets

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
from .config import CXRTrainingArguments, DataArguments

logger = logging.getLogger(__name__)


def load_splits(data_args: DataArguments, training_args: CXRTrainingArguments) -> dict[str, datasets.Dataset]:
    """``{"train": ..., "eval": ..., "test": ...}`` (roles whose split is not ``none``), prepared first when
    ``--images_dir`` is given; labels without a positive image in some split are named in a warning."""
    if data_args.images_dir:
        with training_args.main_process_first(desc="prepare dataset"):
            ensure_prepared(
                data_args.dataset_name,
                data_args.images_dir,
                data_args.labels_csv,
                overwrite=data_args.overwrite_prepared,
                config=data_args.prepare_config,
                image_size=data_args.prepare_image_size,
                split_seed=data_args.split_seed,
                train_val_list=data_args.train_val_list,
                test_list=data_args.test_list,
            )
    dataset = load_chestxray14(data_args.dataset_name, data_args.dataset_config_name, data_args.split_seed)
    wanted = {"train": data_args.train_split, "eval": data_args.eval_split, "test": data_args.test_split}
    wanted = {role: name for role, name in wanted.items() if name is not None}
    selected = select_splits(dataset, list(wanted.values()), data_args.dataset_name)
    splits = {}
    for role, split in zip(wanted, selected, strict=True):
        limit = data_args.max_train_samples if role == "train" else data_args.max_eval_samples
        splits[role] = split.select(range(min(limit, len(split)))) if limit else split
    missing = labels_without_positives(positive_counts(splits))
    if missing:
        logger.warning(
            "labels without a positive image in some split (no AUC there, left out of its macro): %s",
            describe_missing_positives(missing),
        )
    return splits


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
            split_name = getattr(data_args, f"{role}_split")
            directory = default_cache_dir(data_args.dataset_name, split_name, geometry, data_args.image_cache_dir)
            cached[role] = CachedImageDataset(ensure_cache(split, directory, geometry))
            logger.info("%s: %d images cached at %d px in %s", role, len(split), geometry.resize_size, directory)
    return cached, collate_batch, batch_transform
