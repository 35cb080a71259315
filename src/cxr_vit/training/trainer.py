"""``MultiLabelTrainer``: a ``Trainer`` for 15-way multi-label X-ray classification, one job per hook.

- ``_prepare_inputs`` (the input hook): uint8 image batches become model inputs on the training device
  (augmented while training, the eval crop otherwise; :class:`BatchImageTransform`).
- ``compute_loss``: the BCE-with-logits loss, optionally weighted per label (``pos_weight``).
- ``prediction_step``: evaluation through :func:`cxr_vit.inference.forward_logits`, the forward that
  ``scripts/evaluate.py``, ``scripts/predict.py`` and the demo use, so every reported metric comes from one path.
- callbacks: the non-finite-loss stop, the steady throughput, the opt-in train metrics
  (:mod:`cxr_vit.training.callbacks`, :mod:`cxr_vit.training.throughput`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer

from ..data.gpu_augment import BatchImageTransform
from ..inference import forward_logits
from ..modeling import timm_state_dict
from .callbacks import NonFiniteLossWatch, TrainMetrics
from .throughput import DEFAULT_SKIP_STEPS, ThroughputMeter


def positive_weights(labels: np.ndarray, max_weight: float = 100.0) -> torch.Tensor:
    """Per-label negative/positive ratio of a multi-hot matrix, for ``BCEWithLogits(pos_weight=...)``.

    A label without positives gets weight 1 (nothing to up-weight); the ratio is capped at ``max_weight``
    so a label with a handful of positives cannot dominate the loss.
    """
    labels = np.asarray(labels, dtype=np.float64)
    positives = labels.sum(axis=0)
    negatives = len(labels) - positives
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
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.pos_weight = pos_weight
        self.batch_transform = batch_transform
        self.loss_watch = NonFiniteLossWatch(self.accelerator.gather)
        # CXRTrainingArguments has throughput_skip_steps; plain TrainingArguments get the default
        self.throughput = ThroughputMeter(getattr(self.args, "throughput_skip_steps", DEFAULT_SKIP_STEPS))
        self.train_metrics = TrainMetrics(self.accelerator.gather) if train_metrics else None
        for callback in (self.loss_watch, self.throughput, self.train_metrics):
            if callback is not None:
                self.add_callback(callback)

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

    # ---- loss, steps, prediction ---------------------------------------------------------------------

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        # Moved once: a CPU -> GPU copy per step would block the host until the GPU catches up.
        if self.pos_weight is not None and self.pos_weight.device != logits.device:
            self.pos_weight = self.pos_weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=self.pos_weight)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
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
            logits = forward_logits(self.accelerator.unwrap_model(model), inputs["pixel_values"], self.autocast_dtype)
            loss = self.loss(logits, labels).detach() if labels is not None else None
        return (loss, None, None) if prediction_loss_only else (loss, logits, labels)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The evaluation precision: the training run's mixed precision for the backbone, the head in fp32."""
        if self.args.bf16:
            return torch.bfloat16
        return torch.float16 if self.args.fp16 else None

    # ---- outputs -------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Checkpoints and the final model get timm-named weights, so every saved folder also opens in timm.
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        super()._save(output_dir, state_dict=timm_state_dict(state_dict))

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
