"""Fine-tune a timm ViT for 15-way multi-label chest X-ray classification.

    # quickstart: bundled real NIH mini set, small random-init ViT, CPU, under a minute
    accelerate launch --config_file accelerate_config.yaml scripts/train.py --config configs/quickstart.yaml

    # the Kaggle NIH sample with ImageNet ViT-B/16 on a GPU
    accelerate launch --config_file accelerate_config.yaml scripts/train.py --config configs/nih_sample_vit_base.yaml

    # several GPUs, same script
    accelerate launch --config_file accelerate_config.yaml --multi_gpu --num_processes 4 scripts/train.py ...

Any option can be given as a flag (it overrides the YAML file); see --help.
"""

import logging
import os
from collections.abc import Callable

import datasets
import transformers
from transformers import EarlyStoppingCallback, set_seed

from cxr_vit.constants import TRAINING_CURVES_NAME
from cxr_vit.data import (
    NIHDataError,
    check_prepared_features,
    describe_missing_positives,
    ensure_prepared,
    labels_without_positives,
    load_chestxray14,
    positive_counts,
)
from cxr_vit.data.cache import default_cache_dir, ensure_cache
from cxr_vit.data.cached_dataset import CachedImageDataset, collate_batch
from cxr_vit.data.gpu_augment import BatchImageTransform
from cxr_vit.data.intensity import IntensityAugment
from cxr_vit.data.transforms import ModelImages, collate_images, eval_geometry
from cxr_vit.hub import HubAccessError, check_push_access, push_model, write_model_card
from cxr_vit.metrics import compute_metrics
from cxr_vit.modeling import ModelArguments, PretrainedWeightsUnavailable, create_model, data_config
from cxr_vit.pretrained import CheckpointLoadError
from cxr_vit.training import (
    CXRTrainingArguments,
    DataArguments,
    MultiLabelTrainer,
    parse_args,
    plot_training_curves,
    positive_weights,
    save_run_args,
)
from cxr_vit.training.checkpoints import CheckpointError, resolve_resume_checkpoint

logger = logging.getLogger("train")


def load_splits(data_args: DataArguments, training_args: CXRTrainingArguments) -> dict[str, datasets.Dataset]:
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
    splits = {}
    for role, name in wanted.items():
        if name is None:
            continue
        if name not in dataset:
            raise NIHDataError(f"{data_args.dataset_name} has no split {name!r} (has {list(dataset)})")
        check_prepared_features(dataset[name], f"{data_args.dataset_name}[{name}]")
        limit = data_args.max_train_samples if role == "train" else data_args.max_eval_samples
        splits[role] = dataset[name].select(range(min(limit, len(dataset[name])))) if limit else dataset[name]
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
    """Per-role datasets of uint8 squares, their collator, and the batch transform the Trainer runs on the device.

    Both pipelines feed the same squares (:func:`cxr_vit.data.transforms.resize_for_model`) to the same device
    transform, so they train and evaluate identically. cache: each split decoded once into a uint8 memmap (built
    by the main process, reused while it matches), read a sorted batch at a time. datasets: decoded per image in
    the DataLoader workers.
    """
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


def main(model_args: ModelArguments, data_args: DataArguments, training_args: CXRTrainingArguments) -> None:
    # ---- set-up --------------------------------------------------------------------------------
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)
    hub_repo_id = None
    if training_args.push_to_hub:
        # Fail fast: a bad token or repo id must surface now, not after hours of training.
        hub_repo_id = check_push_access(
            training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir)),
            token=training_args.hub_token,
            private=training_args.hub_private_repo,
        )
        logger.info("will push the final model to %s", hub_repo_id)
        # We push once, at the end, with our model card; the Trainer would push its own card at every save.
        training_args.push_to_hub = False
    if data_args.eval_split is None and (training_args.eval_strategy != "no" or training_args.load_best_model_at_end):
        raise SystemExit("error: --eval_split none needs --eval_strategy no and --load_best_model_at_end false")
    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    logger.info(
        "batch %d per device, %d global; learning rate %.3g",
        training_args.per_device_train_batch_size,
        training_args.global_train_batch_size,
        training_args.learning_rate,
    )

    # ---- data ----------------------------------------------------------------------------------
    splits = load_splits(data_args, training_args)
    pos_weight = positive_weights(splits["train"]["labels"]) if training_args.pos_weight else None

    # ---- model ---------------------------------------------------------------------------------
    model = create_model(
        model_args.model_name,
        pretrained=model_args.pretrained,
        image_size=model_args.image_size,
        drop_path_rate=model_args.drop_path_rate,
        model_kwargs=model_args.model_kwargs,
        pretrained_weights=model_args.pretrained_weights,
    )
    model_data_config = data_config(model)
    logger.info(
        "model %s, input %s, data config %s",
        model_args.model_name,
        model.config.pretrained_cfg.get("input_size"),
        model_data_config,
    )
    role_datasets, collator, batch_transform = input_datasets(splits, data_args, training_args, model_data_config)

    # ---- training ------------------------------------------------------------------------------
    callbacks = []
    if training_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training_args.early_stopping_patience))
    trainer = MultiLabelTrainer(
        model=model,
        args=training_args,
        train_dataset=role_datasets["train"],
        eval_dataset=role_datasets.get("eval"),
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        pos_weight=pos_weight,
        batch_transform=batch_transform,
        train_metrics=training_args.train_metrics,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # the best checkpoint's weights: load_best_model_at_end
    train_result.metrics["train_samples"] = len(splits["train"])
    train_result.metrics.update(trainer.throughput.metrics())  # images/s of the training steps alone
    if (peak := trainer.peak_gpu_memory_gb()) is not None:
        train_result.metrics["peak_gpu_memory_gb"] = peak
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    training_history = list(trainer.state.log_history)  # before the final evaluations add their entries

    # ---- evaluation ----------------------------------------------------------------------------
    if "eval" in splits:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(splits["eval"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if "test" in splits:
        metrics = trainer.evaluate(role_datasets["test"], metric_key_prefix="test")
        metrics["test_samples"] = len(splits["test"])
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)

    # ---- artifacts -----------------------------------------------------------------------------
    if trainer.is_world_process_zero():
        curves = os.path.join(training_args.output_dir, TRAINING_CURVES_NAME)
        plot_training_curves(training_history, curves, weighted_loss=training_args.pos_weight)
        save_run_args(os.path.join(training_args.output_dir, "run_args.yaml"), model_args, data_args, training_args)
        write_model_card(training_args.output_dir, hub_repo_id)

    # ---- hub -----------------------------------------------------------------------------------
    if hub_repo_id and trainer.is_world_process_zero():
        try:
            url = push_model(
                training_args.output_dir,
                hub_repo_id,
                token=training_args.hub_token,
                private=training_args.hub_private_repo,
            )
        except Exception as err:
            raise SystemExit(
                f"push to {hub_repo_id} failed: {err}\nThe trained model is safe in {training_args.output_dir}; "
                f"retry with: python scripts/push_to_hub.py --model_dir {training_args.output_dir} "
                f"--repo_id {hub_repo_id}"
            ) from err
        logger.info("model pushed to %s", url)


if __name__ == "__main__":
    try:
        main(*parse_args())
    except (HubAccessError, NIHDataError, CheckpointError, CheckpointLoadError, PretrainedWeightsUnavailable) as err:
        raise SystemExit(f"error: {err}") from None
