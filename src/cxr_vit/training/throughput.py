"""Steady-state training throughput, measured inside the real training loop.

The Trainer's own ``train_samples_per_second`` divides by the whole ``train()`` wall time: model compilation,
DataLoader start-up, every evaluation and checkpoint. What decides whether the input path keeps a GPU fed is
the rate of the training steps themselves, so :class:`ThroughputMeter` times those and nothing else.
"""

from __future__ import annotations

import math
import time

import torch
from transformers import TrainerCallback

DEFAULT_SKIP_STEPS = 10


class ThroughputMeter(TrainerCallback):
    """Training images/s from the end of step ``skip_steps`` to the last step, with every pause left out.

    A pause starts at a step end that the Trainer follows with a log, an evaluation or a checkpoint, and at every
    epoch end (evaluation, checkpoint, the epoch's metrics, the DataLoader's restart), and lasts until the next
    step begins. ``skip_steps`` leaves out ``torch.compile``'s first steps and the DataLoader's start-up. The
    clock is read at the window's edges and at pauses only, synchronising CUDA there: never per step, which
    would itself slow the loop down.

    Images are counted from the training DataLoader: a full optimizer step holds the global batch (all processes,
    all accumulated micro-batches), the last step of an epoch what is left of the epoch's images.
    """

    def __init__(self, skip_steps: int = DEFAULT_SKIP_STEPS):
        if skip_steps < 1:
            raise ValueError(f"skip_steps must be at least 1 (the first step builds lazy state), got {skip_steps}")
        self.skip_steps = skip_steps
        self._reset(first_step=0)

    def _reset(self, first_step: int) -> None:
        self.first_step = first_step
        self.start: float | None = None
        self.images = 0
        self.excluded_seconds = 0.0
        self.paused_at: float | None = None
        self.mark: tuple[float, int, float] | None = None  # (time, images, excluded seconds) at the window's end
        self._device: torch.device | None = None
        self.step_images, self.epoch_images, self.steps_per_epoch = 0, 0, 1

    @property
    def running(self) -> bool:
        return self.start is not None

    def _now(self) -> float:
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.synchronize(self._device)  # the GPU work queued so far belongs before this instant
        return time.perf_counter()

    def images_in_step(self, global_step: int) -> int:
        """Images of optimizer step ``global_step`` (1-based): the global batch, less at an epoch's end."""
        position = (global_step - 1) % self.steps_per_epoch + 1
        if position < self.steps_per_epoch:
            return self.step_images
        return self.epoch_images - (self.steps_per_epoch - 1) * self.step_images

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self._reset(first_step=state.global_step)  # a resumed run measures its own steps
        self._device = args.device
        if train_dataloader is None:
            return
        batches = len(train_dataloader)
        batch_images = getattr(train_dataloader, "total_batch_size", None) or train_dataloader.batch_size
        dataset_images = getattr(train_dataloader, "total_dataset_length", None) or len(train_dataloader.dataset)
        accumulation = args.gradient_accumulation_steps
        self.step_images = batch_images * accumulation
        self.steps_per_epoch = max(1, math.ceil(batches / accumulation))
        # A dropped last batch leaves batches x batch; otherwise the epoch is every image once.
        self.epoch_images = min(dataset_images, batches * batch_images)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.paused_at is not None:
            self.excluded_seconds += self._now() - self.paused_at
            self.paused_at = None

    def on_step_end(self, args, state, control, **kwargs):
        steps_done = state.global_step - self.first_step
        if self.running:
            self.images += self.images_in_step(state.global_step)
        elif steps_done == self.skip_steps:
            self.start = self._now()
        if self.running and (control.should_log or control.should_evaluate or control.should_save):
            self._pause()

    def on_epoch_end(self, args, state, control, **kwargs):
        self._pause()

    def on_train_end(self, args, state, control, **kwargs):
        self._pause()

    def _pause(self) -> None:
        if not self.running or self.paused_at is not None:
            return
        self.paused_at = self._now()
        self.mark = (self.paused_at, self.images, self.excluded_seconds)

    def metrics(self) -> dict[str, float]:
        """``train_steady_images_per_second`` and what it was measured over; empty if the run was too short."""
        if self.mark is None:
            return {}
        end, images, excluded = self.mark
        seconds = end - self.start - excluded
        if images == 0 or seconds <= 0:
            return {}
        return {
            "train_steady_images_per_second": images / seconds,
            "train_steady_images": images,
            "train_steady_seconds": seconds,
        }
