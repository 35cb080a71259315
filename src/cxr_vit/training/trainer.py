"""``MultiLabelTrainer``: a ``Trainer`` with BCE-with-logits loss and per-epoch train loss / AUC."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from ..metrics import multilabel_metrics
from ..modeling import timm_state_dict


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


class _EpochEnd(TrainerCallback):
    def __init__(self, trainer: MultiLabelTrainer):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.log_epoch_train_metrics()


class MultiLabelTrainer(Trainer):
    """Trainer for 15-way multi-label classification.

    Args:
        pos_weight: optional (15,) tensor of positive-class weights for the BCE loss (see
            :func:`positive_weights`).
        *args, **kwargs: passed to :class:`transformers.Trainer`.

    At each epoch end it logs ``epoch_loss`` and ``epoch_auc_macro``: the mean loss and the 14-finding macro
    AUC over the epoch's (augmented) training batches, gathered from all processes. These are what the
    training-curves plot shows for the train side.
    """

    def __init__(self, *args, pos_weight: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.pos_weight = pos_weight
        self._epoch_probabilities: list[torch.Tensor] = []
        self._epoch_labels: list[torch.Tensor] = []
        self._epoch_losses: list[torch.Tensor] = []
        self.add_callback(_EpochEnd(self))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Checkpoints and the final model get timm-named weights, so every saved folder also opens in timm.
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        super()._save(output_dir, state_dict=timm_state_dict(state_dict))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(pixel_values=inputs["pixel_values"])
        logits = outputs.logits.float()
        pos_weight = self.pos_weight.to(logits.device) if self.pos_weight is not None else None
        loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=pos_weight)
        if model.training:
            # One host sync per step: cheap next to a ViT step, and a NaN model must never be saved as "best".
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite training loss ({loss.item()}) at step {self.state.global_step + 1} "
                    f"(epoch {self.state.epoch or 0:.2f}); training stopped. Lower --learning_rate, check the "
                    "inputs, or resume from the last checkpoint."
                )
            self._remember_train_batch(logits.detach(), labels.detach(), loss.detach())
        return (loss, outputs) if return_outputs else loss

    def _remember_train_batch(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        # gather_for_metrics drops the samples a distributed sampler repeats to even out the last batch.
        probabilities, labels = self.accelerator.gather_for_metrics((torch.sigmoid(logits), labels))
        loss = self.accelerator.gather(loss.reshape(1))
        self._epoch_probabilities.append(probabilities.cpu())
        self._epoch_labels.append(labels.cpu())
        self._epoch_losses.append(loss.float().cpu())

    def log_epoch_train_metrics(self) -> None:
        if not self._epoch_losses:
            return
        probabilities = torch.cat(self._epoch_probabilities).numpy()
        labels = torch.cat(self._epoch_labels).numpy()
        logs = {"epoch_loss": float(torch.cat(self._epoch_losses).mean())}
        logs["epoch_auc_macro"] = multilabel_metrics(probabilities, labels)["auc_macro"]
        self._epoch_probabilities, self._epoch_labels, self._epoch_losses = [], [], []
        self.log(logs)
