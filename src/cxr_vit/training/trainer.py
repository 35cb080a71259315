"""``MultiLabelTrainer``: a ``Trainer`` with BCE-with-logits loss and per-epoch train loss / AUC."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from ..data.gpu_augment import BatchImageTransform
from ..metrics import multilabel_metrics
from ..modeling import timm_state_dict
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


# A non-finite loss is looked for on the host every this many steps, and always before a log, an evaluation
# or a checkpoint: reading it every step would block the host on the GPU once per step.
NONFINITE_CHECK_STEPS = 25


class _StepHooks(TrainerCallback):
    """Calls the trainer's own per-step and per-epoch checks (a callback runs them at the right moments)."""

    def __init__(self, trainer: MultiLabelTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        about_to_use_weights = control.should_log or control.should_evaluate or control.should_save
        if about_to_use_weights or state.global_step % NONFINITE_CHECK_STEPS == 0:
            self.trainer.check_finite_loss()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.check_finite_loss()
        with self.trainer.throughput.excluded():  # a host-side metrics pass, not training
            self.trainer.log_epoch_train_metrics()


class MultiLabelTrainer(Trainer):
    """Trainer for 15-way multi-label classification.

    Args:
        pos_weight: optional (15,) tensor of positive-class weights for the BCE loss (see
            :func:`positive_weights`).
        batch_transform: turns uint8 batches (the cache input pipeline) into model inputs on the training
            device: augmented while training, timm's eval transform otherwise. Float batches pass unchanged.
        *args, **kwargs: passed to :class:`transformers.Trainer`.

    At each epoch end it logs ``epoch_loss`` and ``epoch_auc_macro``: the mean loss and the 14-finding macro
    AUC over the epoch's (augmented) training batches, gathered from all processes. These are what the
    training-curves plot shows for the train side. On a GPU it also logs ``peak_gpu_memory_gb``.
    ``self.throughput.metrics()`` gives the training steps' own images/s (:class:`ThroughputMeter`).

    A non-finite training loss stops training with :class:`FloatingPointError` naming the first bad step,
    before that model is logged, evaluated or saved. The training step never waits on the GPU: the check
    runs on the device and is read every ``NONFINITE_CHECK_STEPS`` steps and before each log/eval/save.
    """

    def __init__(
        self,
        *args,
        pos_weight: torch.Tensor | None = None,
        batch_transform: BatchImageTransform | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.pos_weight = pos_weight
        self.batch_transform = batch_transform
        # CXRTrainingArguments has throughput_skip_steps; plain TrainingArguments get the default
        self.throughput = ThroughputMeter(getattr(self.args, "throughput_skip_steps", DEFAULT_SKIP_STEPS))
        self._epoch_probabilities: list[torch.Tensor] = []
        self._epoch_labels: list[torch.Tensor] = []
        self._epoch_losses: list[torch.Tensor] = []
        self._first_nonfinite_step: torch.Tensor | None = None  # on the device; 0 while every loss is finite
        self.add_callback(_StepHooks(self))
        self.add_callback(self.throughput)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Checkpoints and the final model get timm-named weights, so every saved folder also opens in timm.
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        super()._save(output_dir, state_dict=timm_state_dict(state_dict))

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

    def _save_checkpoint(self, *args, **kwargs):
        with self.throughput.excluded():
            return super()._save_checkpoint(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with self.throughput.excluded():
            return super().evaluate(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(pixel_values=self.model_inputs(inputs["pixel_values"], training=model.training))
        logits = outputs.logits.float()
        loss = F.binary_cross_entropy_with_logits(
            logits, labels.to(logits.dtype), pos_weight=self._pos_weight_on(logits.device)
        )
        if model.training:
            self._watch_loss(loss.detach())
            self._remember_train_batch(logits.detach(), labels.detach(), loss.detach())
        return (loss, outputs) if return_outputs else loss

    def _pos_weight_on(self, device: torch.device) -> torch.Tensor | None:
        # Moved once: a CPU -> GPU copy per step would block the host until the GPU catches up.
        if self.pos_weight is not None and self.pos_weight.device != device:
            self.pos_weight = self.pos_weight.to(device)
        return self.pos_weight

    def _watch_loss(self, loss: torch.Tensor) -> None:
        """Record, on the device, the first step whose loss is not finite."""
        if self._first_nonfinite_step is None:
            self._first_nonfinite_step = torch.zeros((), dtype=torch.long, device=loss.device)
        first_bad_here = ~torch.isfinite(loss) & (self._first_nonfinite_step == 0)
        self._first_nonfinite_step = torch.where(first_bad_here, self.state.global_step + 1, self._first_nonfinite_step)

    def check_finite_loss(self) -> None:
        """Raise :class:`FloatingPointError` if any training loss so far, in any process, was NaN or infinite.

        Every process calls this at the same steps and reads all processes' flags, so all of them stop
        together: one stopping alone would leave the others waiting in the next gradient all-reduce.
        """
        if self._first_nonfinite_step is None:
            return
        per_process = self.accelerator.gather(self._first_nonfinite_step.reshape(1))
        bad_steps = per_process[per_process > 0]
        if len(bad_steps) == 0:
            return
        step = int(bad_steps.min())
        raise FloatingPointError(
            f"non-finite training loss at step {step} (now at step {self.state.global_step}, epoch "
            f"{self.state.epoch or 0:.2f}); training stopped before that model was logged, evaluated or saved. "
            "Lower --learning_rate, check the inputs, or resume from the last checkpoint."
        )

    def model_inputs(self, pixel_values: torch.Tensor, training: bool) -> torch.Tensor:
        """Model inputs of a batch already on the training device: uint8 cache batches are transformed here."""
        if self.batch_transform is None or pixel_values.is_floating_point():
            return pixel_values
        return self.batch_transform(pixel_values, training=training)

    def peak_gpu_memory_gb(self) -> float | None:
        """``torch.cuda.max_memory_allocated`` of this process in GiB; ``None`` off CUDA."""
        if self.args.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.args.device) / 2**30

    def _remember_train_batch(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        # gather_for_metrics drops the samples a distributed sampler repeats to even out the last batch. It
        # can tell them apart only when a step is one batch: with gradient accumulation the Trainer fetches a
        # step's batches ahead, and accelerate would trim every batch of the last step, so there the few
        # repeated samples are kept instead.
        gather = self.accelerator.gather_for_metrics
        if self.args.gradient_accumulation_steps > 1:
            gather = self.accelerator.gather
        probabilities, labels = gather((torch.sigmoid(logits), labels))
        loss = self.accelerator.gather(loss.reshape(1))
        self.throughput.count(labels.shape[0])
        # Kept on the device until the epoch ends: no device-to-host copy per step.
        self._epoch_probabilities.append(probabilities)
        self._epoch_labels.append(labels)
        self._epoch_losses.append(loss.float())

    def log_epoch_train_metrics(self) -> None:
        if not self._epoch_losses:
            return
        probabilities = torch.cat(self._epoch_probabilities).float().cpu().numpy()
        labels = torch.cat(self._epoch_labels).float().cpu().numpy()
        logs = {"epoch_loss": float(torch.cat(self._epoch_losses).mean())}
        logs["epoch_auc_macro"] = multilabel_metrics(probabilities, labels)["auc_macro"]
        if (peak := self.peak_gpu_memory_gb()) is not None:
            logs["peak_gpu_memory_gb"] = peak
        self._epoch_probabilities, self._epoch_labels, self._epoch_losses = [], [], []
        self.log(logs)
