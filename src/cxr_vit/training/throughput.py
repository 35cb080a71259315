"""Steady-state training throughput, measured inside the real training loop.

The Trainer's own ``train_samples_per_second`` divides by the whole ``train()`` wall time: model compilation,
DataLoader start-up, every evaluation and checkpoint. What decides whether the input path keeps a GPU fed is
the rate of the training steps themselves, so :class:`ThroughputMeter` times those and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import TrainerCallback

DEFAULT_SKIP_STEPS = 10


class ThroughputMeter(TrainerCallback):
    """Training images/s from the end of step ``skip_steps`` to the last step, with the spans the trainer marks
    :meth:`excluded` (evaluation, checkpointing, the epoch-end train-metrics pass) left out.

    ``skip_steps`` leaves out ``torch.compile``'s first steps and the DataLoader's start-up. The clock is
    read at the window's edges, at epoch ends and around each excluded span, synchronising CUDA there only:
    never per step, which would itself slow the loop down. Images are counted by the trainer (:meth:`count`),
    so a short last batch counts what it holds. The window's end moves to every epoch end and to the final
    step, so a run stopped early (early stopping) ends at its last completed epoch.
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
        self.mark: tuple[float, int, float] | None = None  # (time, images, excluded seconds) at the window's end
        self._device: torch.device | None = None

    @property
    def running(self) -> bool:
        return self.start is not None

    def _now(self) -> float:
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.synchronize(self._device)  # the GPU work queued so far belongs before this instant
        return time.perf_counter()

    def count(self, images: int) -> None:
        """Add one step's images (all processes together); the trainer calls this every training step."""
        if self.running:
            self.images += images

    @contextmanager
    def excluded(self) -> Iterator[None]:
        """Leave the time spent inside (evaluation, checkpointing, metrics) out of the measured window."""
        if not self.running:
            yield
            return
        begin = self._now()
        try:
            yield
        finally:
            self.excluded_seconds += self._now() - begin

    def on_train_begin(self, args, state, control, **kwargs):
        self._reset(first_step=state.global_step)  # a resumed run measures its own steps
        self._device = args.device

    def on_step_end(self, args, state, control, **kwargs):
        steps_done = state.global_step - self.first_step
        if steps_done == self.skip_steps:
            self.start = self._now()
        elif self.running and state.global_step >= state.max_steps:
            self._set_mark()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.running and state.global_step - self.first_step > self.skip_steps:
            self._set_mark()

    def _set_mark(self) -> None:
        self.mark = (self._now(), self.images, self.excluded_seconds)

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
