"""Training-loop helpers as Trainer callbacks: the non-finite-loss stop, the opt-in train metrics, the weights' EMA.

Both keep their per-step work on the device and read it on the host only at the moments the Trainer would block
anyway (a log, an evaluation, a checkpoint, an epoch end), so a training step never waits on the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from timm.utils import ModelEmaV3
from transformers import TrainerCallback

from ..metrics import multilabel_metrics

# A non-finite loss is looked for on the host every this many steps, and always before a log, an evaluation
# or a checkpoint: reading it every step would block the host on the GPU once per step.
NONFINITE_CHECK_STEPS = 25


class NonFiniteLossWatch(TrainerCallback):
    """Stops training with :class:`FloatingPointError` at the first NaN or infinite training loss.

    The trainer hands it every step's loss (:meth:`observe`); the first bad step is recorded on the device and
    read every ``check_every`` steps and before each log, evaluation and checkpoint, so no model from that step
    on is ever logged, evaluated or saved.

    Args:
        gather: ``accelerator.gather``: every process reads all processes' flags at the same steps, so all of
            them stop together (one stopping alone would leave the others waiting in the next all-reduce).
    """

    def __init__(self, gather: Callable[[torch.Tensor], torch.Tensor], check_every: int = NONFINITE_CHECK_STEPS):
        self.gather = gather
        self.check_every = check_every
        self.first_bad_step: torch.Tensor | None = None  # on the device; 0 while every loss is finite

    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Record, on the device, ``step`` if ``loss`` is not finite and no earlier step was."""
        if self.first_bad_step is None:
            self.first_bad_step = torch.zeros((), dtype=torch.long, device=loss.device)
        first_bad_here = ~torch.isfinite(loss) & (self.first_bad_step == 0)
        self.first_bad_step = torch.where(first_bad_here, step, self.first_bad_step)

    def check(self, state) -> None:
        if self.first_bad_step is None:
            return
        per_process = self.gather(self.first_bad_step.reshape(1))
        bad_steps = per_process[per_process > 0]
        if len(bad_steps) == 0:
            return
        raise FloatingPointError(
            f"non-finite training loss at step {int(bad_steps.min())} (now at step {state.global_step}, epoch "
            f"{state.epoch or 0:.2f}); training stopped before that model was logged, evaluated or saved. "
            "Lower --learning_rate, check the inputs, or resume from the last checkpoint."
        )

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log or control.should_evaluate or control.should_save:
            self.check(state)
        elif state.global_step % self.check_every == 0:
            self.check(state)

    def on_epoch_end(self, args, state, control, **kwargs):
        self.check(state)


class TrainMetrics(TrainerCallback):
    """``epoch_auc_macro``: the 14-finding macro AUC over each epoch's (augmented) training batches.

    Off by default (``--train_metrics``). Predictions stay on the device during the epoch and are gathered from
    all processes once, at the epoch's end: no collective per step. With several processes the few images a
    distributed sampler repeats to even out the last batch are counted twice, which a training-curve AUC
    tolerates. The result waits in :meth:`pop_pending` for the trainer's next training log (the epoch's loss
    log), so it lands in the log history, TensorBoard and the training curves beside the loss. (Logging it
    here, on its own, would make the Trainer skip that epoch's loss log.)

    Args:
        gather: ``accelerator.gather``.
    """

    def __init__(self, gather: Callable):
        self.gather = gather
        self.probabilities: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.pending: dict[str, float] = {}

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.probabilities.append(torch.sigmoid(logits.detach().float()))
        self.labels.append(labels.detach())

    def on_epoch_end(self, args, state, control, **kwargs):
        if not self.probabilities:
            return
        probabilities, labels = self.gather((torch.cat(self.probabilities), torch.cat(self.labels)))
        self.probabilities, self.labels = [], []
        metrics = multilabel_metrics(probabilities.float().cpu().numpy(), labels.float().cpu().numpy())
        self.pending = {"epoch_auc_macro": metrics["auc_macro"], "epoch_train_images": len(labels)}

    def pop_pending(self) -> dict[str, float]:
        pending, self.pending = self.pending, {}
        return pending


EMA_WEIGHTS_NAME = "ema.safetensors"


class WeightEma(TrainerCallback):
    """An exponential moving average of the model's weights (timm's ``ModelEmaV3``), updated after every step.

    The average warms up (timm's ``use_warmup``: ``decay_t = min(decay, 1 - (1 + t) ** (-2/3))``), so a short
    fine-tune does not evaluate an average still dominated by its first steps. :class:`MultiLabelTrainer`
    evaluates it, stores it in every checkpoint (``ema.safetensors``, timm-named, written before the checkpoint
    counts as complete) and restores it on resume. Updates are device-side lerps: no host sync.
    """

    def __init__(self, decay: float):
        self.decay = decay
        self.ema: ModelEmaV3 | None = None
        self.restored: dict[str, torch.Tensor] | None = None  # weights read from a checkpoint, until attached
        self.finished = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.ema is None:
            self.ema = ModelEmaV3(model, decay=self.decay, use_warmup=True)
        if self.restored is not None:
            self.ema.module.timm_model.load_state_dict(self.restored)
            self.restored = None
        self.finished = False

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(model, step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.finished = True

    @property
    def active(self) -> bool:
        """Whether evaluations should use the average: during training (afterwards the model holds its pick)."""
        return self.ema is not None and not self.finished

    def timm_state_dict(self) -> dict[str, torch.Tensor]:
        return self.ema.module.timm_model.state_dict()

    @contextmanager
    def swapped_into(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the block with the average's weights in ``model`` (copied in place, restored afterwards)."""
        backup = [tensor.detach().clone() for tensor in model.state_dict().values()]
        with torch.no_grad():
            for target, average in zip(model.state_dict().values(), self.ema.module.state_dict().values(), strict=True):
                target.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for target, saved in zip(model.state_dict().values(), backup, strict=True):
                    target.copy_(saved)
