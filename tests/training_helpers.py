"""Test helpers for MultiLabelTrainer: a toy linear model and rows for fast loop tests, and a tiny ViT trainer on
a uint8 image cache (the real input path) for the tests that need the model and its batch transform."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import TINY_IMAGE_SIZE, tiny_cache
from transformers import TrainingArguments
from transformers.modeling_outputs import ImageClassifierOutput

from cxr_vit.data.cached_dataset import CachedImageDataset, collate_batch
from cxr_vit.data.gpu_augment import BatchImageTransform
from cxr_vit.data.transforms import eval_geometry
from cxr_vit.metrics import compute_metrics
from cxr_vit.modeling import create_model, data_config
from cxr_vit.training import CXRTrainingArguments, MultiLabelTrainer


class ToyLinear(torch.nn.Module):
    """4 inputs -> 15 logits; from its ``nan_from_call``-th training forward on, the logits are NaN."""

    def __init__(self, nan_from_call: int | None = None):
        super().__init__()
        self.linear = torch.nn.Linear(4, 15)
        self.nan_from_call, self.calls = nan_from_call, 0

    def forward(self, pixel_values):
        logits = self.linear(pixel_values)
        if self.training and self.nan_from_call is not None:
            self.calls += 1
            if self.calls >= self.nan_from_call:
                logits = logits * float("nan")
        return ImageClassifierOutput(logits=logits)


def toy_rows(count: int) -> list[dict]:
    return [{"pixel_values": torch.randn(4), "labels": (torch.rand(15) < 0.5).float()} for _ in range(count)]


def toy_args(output_dir: Path, **overrides) -> TrainingArguments:
    """Plain TrainingArguments for a one-process CPU run of a toy model: no logging, reporting or column pruning."""
    fixed = dict(logging_strategy="no", report_to="none", use_cpu=True, remove_unused_columns=False)
    return TrainingArguments(str(output_dir), logging_nan_inf_filter=False, **fixed, **overrides)


def tiny_vit_trainer(output_dir: Path, cache_count: int = 64, model=None, **kwargs) -> MultiLabelTrainer:
    """A random-init ViT-Tiny at 32 px (or ``model``) training on a tiny uint8 cache, as train.py's cache pipeline
    does; with ``eval_strategy``, it evaluates on the same cache.

    ``kwargs`` go to CXRTrainingArguments, except ``callbacks``, ``pos_weight`` and ``train_metrics``
    (MultiLabelTrainer's). Unless given, evaluation, checkpoints, logging and reporting are off.
    """
    trainer_kwargs = {name: kwargs.pop(name) for name in ("callbacks", "pos_weight", "train_metrics") if name in kwargs}
    settings = dict(eval_strategy="no", save_strategy="no", logging_strategy="no", load_best_model_at_end=False,
                    report_to="none")  # fmt: skip
    args = CXRTrainingArguments(output_dir=str(output_dir), **{**settings, **kwargs})
    model = model or create_model("vit_tiny_patch16_224", pretrained=False, image_size=TINY_IMAGE_SIZE)
    config = data_config(model)
    images = CachedImageDataset(tiny_cache(Path(output_dir) / "cache", count=cache_count,
                                           size=eval_geometry(config).resize_size))  # fmt: skip
    return MultiLabelTrainer(
        model=model,
        args=args,
        train_dataset=images,
        eval_dataset=images if args.eval_strategy != "no" else None,
        data_collator=collate_batch,
        compute_metrics=compute_metrics,
        batch_transform=BatchImageTransform(config),
        **trainer_kwargs,
    )
