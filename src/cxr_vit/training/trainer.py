"""``MultiLabelTrainer``: a ``Trainer`` for 15-way multi-label X-ray classification, one job per hook.

- ``_prepare_inputs`` (the input hook): uint8 image batches become model inputs on the training device
  (augmented while training, the eval crop otherwise; :class:`BatchImageTransform`).
- ``compute_loss``: the BCE-with-logits loss, optionally weighted per label (``pos_weight``), over the known labels
  only: a NaN target (a label the image's source does not annotate) adds nothing (:func:`masked_bce_with_logits`).
- ``prediction_step``: evaluation through :func:`cxr_vit.inference.forward_logits`, the forward that
  ``scripts/evaluate.py``, ``scripts/predict.py`` and the demo use, so every reported metric comes from one path.
- ``__init__`` / ``train``: ``--finetune`` freezes or adapts the model (:mod:`cxr_vit.training.finetune`); LoRA
  adapters are merged into plain weights when training ends; linear-probe batches carry ``features``, which
  only the head sees.
- ``create_optimizer``: timm's parameter groups (:mod:`cxr_vit.training.optim`): no weight decay on biases,
  norms, position embeddings and class tokens, and optional layer-wise learning-rate decay.
- ``evaluate`` / ``_save`` / ``_load_from_checkpoint`` / ``_load_best_model``: the optional weights' EMA is
  evaluated, checkpointed beside the raw weights, restored on resume and kept as the best model. With several
  training sources (``eval_sources``), each validation also scores every source's own split (``eval_<source>_*``)
  beside the pooled one (``eval_*``, which picks the best model).
- ``save_model``: under FSDP the final model is gathered into one safetensors file (checkpoints stay sharded).
- callbacks: the non-finite-loss stop, the steady throughput, the opt-in train metrics, the EMA
  (:mod:`cxr_vit.training.callbacks`, :mod:`cxr_vit.training.throughput`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.gpu_augment import BatchImageTransform
from ..inference import forward_logits
from ..metrics import masked_bce_with_logits
from ..modeling import timm_state_dict
from .callbacks import EMA_WEIGHTS_NAME, NonFiniteLossWatch, TrainMetrics, WeightEma
from .finetune import apply_finetune, merge_lora, parse_finetune
from .optim import build_param_groups, format_param_groups
from .throughput import DEFAULT_SKIP_STEPS, ThroughputMeter

logger = logging.getLogger(__name__)


def positive_weights(labels: np.ndarray, max_weight: float = 100.0) -> torch.Tensor:
    """Per-label negative/positive ratio of a multi-hot matrix, for ``BCEWithLogits(pos_weight=...)``.

    A label without positives gets weight 1 (nothing to up-weight); the ratio is capped at ``max_weight``
    so a label with a handful of positives cannot dominate the loss. Missing (NaN) entries are not counted.
    """
    labels = np.asarray(labels, dtype=np.float64)
    known = np.isfinite(labels)
    positives = np.where(known, labels, 0.0).sum(axis=0)
    negatives = known.sum(axis=0) - positives
    ratio = np.divide(negatives, positives, out=np.ones_like(positives), where=positives > 0)
    return torch.tensor(np.clip(ratio, 1.0, max_weight), dtype=torch.float32)


class MultiLabelTrainer(Trainer):
    """Trainer for 15-way multi-label classification.

    Args:
        pos_weight: optional (15,) tensor of positive-class weights for the BCE loss (see
            :func:`positive_weights`); it weights the training loss and ``eval_loss`` (``eval_bce`` stays
            unweighted).
        batch_transform: turns uint8 image batches into model inputs on the training device. Float batches
            pass unchanged.
        train_metrics: log ``epoch_auc_macro``, the macro AUC over each epoch's training batches.
        eval_sources: ``{source: its validation dataset}`` when training on several sources: the pooled
            ``eval_dataset`` is scored as ``eval_*``, and each of these as ``eval_<source>_*`` in the same evaluation.
        *args, **kwargs: passed to :class:`transformers.Trainer`.

    ``self.throughput.metrics()`` gives the training steps' own images/s (:class:`ThroughputMeter`). A
    non-finite training loss stops training with :class:`FloatingPointError` before that model is logged,
    evaluated or saved (:class:`NonFiniteLossWatch`).
    """

    def __init__(
        self,
        *args,
        pos_weight: torch.Tensor | None = None,
        batch_transform: BatchImageTransform | None = None,
        train_metrics: bool = False,
        eval_sources: dict | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.eval_sources = dict(eval_sources or {})
        self.pos_weight = pos_weight
        self.batch_transform = batch_transform
        self.loss_watch = NonFiniteLossWatch(self.accelerator.gather)
        # CXRTrainingArguments has throughput_skip_steps; plain TrainingArguments get the default
        self.throughput = ThroughputMeter(getattr(self.args, "throughput_skip_steps", DEFAULT_SKIP_STEPS))
        self.train_metrics = TrainMetrics(self.accelerator.gather) if train_metrics else None
        ema_decay = getattr(self.args, "ema_decay", None)
        self.ema = WeightEma(ema_decay) if ema_decay else None
        for callback in (self.loss_watch, self.throughput, self.train_metrics, self.ema):
            if callback is not None:
                self.add_callback(callback)
        self.finetune = getattr(self.args, "finetune", "full")
        if hasattr(self.model, "timm_model"):  # records the mode and its trainable parameters in the config
            args = self.args
            apply_finetune(self.model, self.finetune, getattr(args, "lora_rank", 8), getattr(args, "lora_alpha", 16.0),
                           getattr(args, "lora_dropout", 0.0), getattr(args, "lora_target_modules", "qkv"))  # fmt: skip

    # ---- inputs --------------------------------------------------------------------------------------

    def _prepare_inputs(self, inputs: dict) -> dict:
        inputs = super()._prepare_inputs(inputs)
        pixels = inputs.get("pixel_values")
        if self.batch_transform is not None and pixels is not None and not pixels.is_floating_point():
            inputs = {**inputs, "pixel_values": self.batch_transform(pixels, training=self.model.training)}
        return inputs

    def get_train_dataloader(self):
        # CXRTrainingArguments.train_drop_last: for the training loader only; `dataloader_drop_last` would also
        # drop evaluation images.
        if not getattr(self.args, "train_drop_last", False) or self.args.dataloader_drop_last:
            return super().get_train_dataloader()
        self.args.dataloader_drop_last = True
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = False

    def create_optimizer(self, model=None):
        model = self.model if model is None else model
        if self.optimizer is not None or self.optimizer_cls_and_kwargs is not None or not hasattr(model, "timm_model"):
            return super().create_optimizer(model)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        if {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
            raise ValueError(f"--optim {self.args.optim} builds its own parameter groups; use an AdamW-style optimizer")
        groups = build_param_groups(
            model, self.args.learning_rate, self.args.weight_decay, getattr(self.args, "layer_decay", None)
        )
        logger.info("optimizer %s, parameter groups:\n%s", optimizer_cls.__name__, format_param_groups(groups))
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # ---- loss, steps, prediction ---------------------------------------------------------------------

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        # Moved once: a CPU -> GPU copy per step would block the host until the GPU catches up.
        if self.pos_weight is not None and self.pos_weight.device != logits.device:
            self.pos_weight = self.pos_weight.to(logits.device)
        return masked_bce_with_logits(logits, labels.to(logits.dtype), self.pos_weight)

    def head_logits(self, model, features: torch.Tensor) -> torch.Tensor:
        """The classifier alone on cached pooled features (``--finetune linear``)."""
        return self.accelerator.unwrap_model(model).timm_model.get_classifier()(features)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "features" in inputs:
            outputs = ImageClassifierOutput(logits=self.head_logits(model, inputs["features"]))
        else:
            outputs = model(pixel_values=inputs["pixel_values"])
        loss = self.loss(outputs.logits, inputs["labels"])
        if self.train_metrics is not None and model.training:
            self.train_metrics.update(outputs.logits, inputs["labels"])
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.loss_watch.observe(loss, self.state.global_step + 1)  # global_step counts finished steps
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        with torch.no_grad():
            unwrapped = self.accelerator.unwrap_model(model)
            if "features" in inputs:
                logits = self.head_logits(model, inputs["features"]).float()
            else:
                logits = forward_logits(unwrapped, inputs["pixel_values"], self.autocast_dtype)
            loss = self.loss(logits, labels).detach() if labels is not None else None
        return (loss, None, None) if prediction_loss_only else (loss, logits, labels)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The evaluation precision: the training run's mixed precision for the backbone, the head in fp32."""
        if self.args.bf16:
            return torch.bfloat16
        return torch.float16 if self.args.fp16 else None

    # ---- the weights' EMA ------------------------------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluate the raw weights, or during training with ``--ema_decay`` the EMA (``--ema_eval``); the validation
        (no ``eval_dataset``) of a run on several sources also scores each source apart (``eval_<source>_*``)."""
        metrics = self._evaluate_weights(eval_dataset, ignore_keys, metric_key_prefix)
        for source, dataset in (self.eval_sources if eval_dataset is None else {}).items():
            metrics.update(self._evaluate_weights(dataset, ignore_keys, f"{metric_key_prefix}_{source}"))
        return metrics

    def _evaluate_weights(self, eval_dataset, ignore_keys, metric_key_prefix: str) -> dict[str, float]:
        mode = getattr(self.args, "ema_eval", "raw")
        if self.ema is None or not self.ema.active or mode == "raw":
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        raw = super().evaluate(eval_dataset, ignore_keys, f"{metric_key_prefix}_raw") if mode == "both" else {}
        with self.ema.swapped_into(self.accelerator.unwrap_model(self.model)):
            return {**raw, **super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)}

    def _uses_ema_weights(self) -> bool:
        return self.ema is not None and getattr(self.args, "ema_eval", "raw") != "raw"

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / EMA_WEIGHTS_NAME
        if self.ema is not None:
            if path.is_file():
                self.ema.restored = load_file(str(path))
            else:
                logger.warning("%s has no %s: the EMA restarts from the resumed weights", resume_from_checkpoint,
                               EMA_WEIGHTS_NAME)  # fmt: skip

    def _load_best_model(self) -> None:
        super()._load_best_model()
        path = Path(self.state.best_model_checkpoint or "") / EMA_WEIGHTS_NAME
        if self._uses_ema_weights() and path.is_file():  # the best evaluation was of the EMA: keep those weights
            self.accelerator.unwrap_model(self.model).timm_model.load_state_dict(load_file(str(path)))
            logger.info("best model: the EMA weights of %s", self.state.best_model_checkpoint)

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        if parse_finetune(self.finetune)[0] == "lora":  # plain weights from here on: what is saved and evaluated
            merged = merge_lora(self.accelerator.unwrap_model(self.model))
            logger.info("merged %d LoRA adapters into the weights", merged)
        if self._uses_ema_weights() and not self.args.load_best_model_at_end:  # the final EMA is the model
            self.accelerator.unwrap_model(self.model).timm_model.load_state_dict(self.ema.timm_state_dict())
        return output

    # ---- outputs -------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Checkpoints and the final model get timm-named weights, so every saved folder also opens in timm.
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        super()._save(output_dir, state_dict=timm_state_dict(state_dict))
        output_dir = output_dir or self.args.output_dir
        if (
            self.ema is not None
            and self.ema.ema is not None
            and Path(output_dir).name.startswith(PREFIX_CHECKPOINT_DIR)
        ):
            # Beside the raw weights, before trainer_state.json marks the checkpoint complete.
            save_file(self.ema.timm_state_dict(), os.path.join(output_dir, EMA_WEIGHTS_NAME))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # Under FSDP with sharded checkpoints the Trainer writes only shards; the final model (not a checkpoint) is
        # gathered from every process into one plain safetensors file, which rank 0 writes.
        sharded = self.is_fsdp_enabled and "SHARDED" in str(self.accelerator.state.fsdp_plugin.state_dict_type)
        if _internal_call or not sharded:
            return super().save_model(output_dir, _internal_call)
        self._save(output_dir, state_dict=self.accelerator.get_state_dict(self.model))

    def peak_gpu_memory_gb(self) -> float | None:
        """``torch.cuda.max_memory_allocated`` of this process in GiB; ``None`` off CUDA."""
        if self.args.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.args.device) / 2**30

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the memory and the epoch's train metrics, if any
            if (peak := self.peak_gpu_memory_gb()) is not None:
                logs = {**logs, "peak_gpu_memory_gb": peak}
            if self.train_metrics is not None:
                logs = {**logs, **self.train_metrics.pop_pending()}
        super().log(logs, start_time)
