"""Fine-tune a timm ViT for 15-way multi-label chest X-ray classification.

    # quickstart: bundled real NIH mini set, small random-init ViT, CPU, under a minute
    accelerate launch --config_file accelerate_config.yaml scripts/train.py --config configs/quickstart.yaml

    # the Kaggle NIH sample with ImageNet ViT-B/16 on a GPU
    accelerate launch --config_file accelerate_config.yaml scripts/train.py --config configs/nih_sample_vit_base.yaml

    # several GPUs, same script
    accelerate launch --config_file accelerate_config.yaml --multi_gpu --num_processes 4 scripts/train.py ...

    # several machines (docs/training.md, "More than one machine"; SLURM: examples/slurm/train.sbatch)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 scripts/train.py ...

Any option can be given as a flag (it overrides the YAML file); see --help.
"""

import logging
import os

import transformers
from torch.utils.data import default_collate
from transformers import EarlyStoppingCallback, set_seed

from cxr_vit import (
    CXRTrainingArguments,
    DataArguments,
    HubAccessError,
    ModelArguments,
    MultiLabelTrainer,
    NIHDataError,
    check_push_access,
    create_model,
    parse_args,
    push_model,
)
from cxr_vit.cards import write_model_card
from cxr_vit.constants import SOURCES_KEY, TRAINING_CURVES_NAME
from cxr_vit.encoders import EncoderNotFoundError
from cxr_vit.metrics import compute_metrics
from cxr_vit.modeling import PretrainedWeightsUnavailable, data_config
from cxr_vit.pretrained import CheckpointLoadError
from cxr_vit.training import plot_training_curves, positive_weights, save_run_args
from cxr_vit.training.checkpoints import CheckpointError, resolve_resume_checkpoint
from cxr_vit.training.distributed import LaunchError, check_process_count, configure_fsdp
from cxr_vit.training.finetune import feature_datasets
from cxr_vit.training.inputs import input_datasets, load_splits, per_source, training_sources

logger = logging.getLogger("train")


def main(model_args: ModelArguments, data_args: DataArguments, training_args: CXRTrainingArguments) -> None:
    # ---- set-up --------------------------------------------------------------------------------
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    check_process_count(training_args.world_size)
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

    # ---- data (several --dataset_name: their union, each source also validated apart) ---------
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
        allow_resampled_weights=model_args.allow_resampled_weights,
    )
    setattr(model.config, SOURCES_KEY, training_sources(splits))  # in config.json: the card and evaluate.py read it
    configure_fsdp(training_args, model)
    model_data_config = data_config(model)
    logger.info(
        "model %s, input %s, data config %s",
        model_args.model_name,
        model.config.pretrained_cfg.get("input_size"),
        model_data_config,
    )
    role_datasets, collator, batch_transform = input_datasets(splits, data_args, training_args, model_data_config)
    feature_seconds = None
    if training_args.finetune == "linear":  # the frozen backbone runs once per split; epochs train the head
        role_datasets, feature_seconds = feature_datasets(
            model, role_datasets, collator, batch_transform, training_args.per_device_eval_batch_size,
            training_args.device,
        )  # fmt: skip
        collator = default_collate

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
        eval_sources=per_source(role_datasets, "eval"),
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # the best checkpoint's weights: load_best_model_at_end
    train_result.metrics["train_samples"] = len(splits["train"])
    train_result.metrics.update(trainer.throughput.metrics())  # images/s of the training steps alone
    if feature_seconds is not None:
        train_result.metrics["linear_probe_feature_seconds"] = feature_seconds
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
        for source, dataset in per_source(role_datasets, "test").items():
            metrics.update(trainer.evaluate(dataset, metric_key_prefix=f"test_{source}"))
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
    except (
        HubAccessError,
        NIHDataError,
        CheckpointError,
        CheckpointLoadError,
        PretrainedWeightsUnavailable,
        LaunchError,
        EncoderNotFoundError,
    ) as err:
        raise SystemExit(f"error: {err}") from None
