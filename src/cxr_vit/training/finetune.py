"""Fine-tuning modes (``--finetune``): which parameters train, as encoder papers compare them.

- ``full``: every parameter.
- ``linear``: the head only, on pooled features of the frozen backbone computed once per split
  (:func:`feature_datasets`), so an epoch costs one head step per batch: the linear-probe protocol.
- ``lora``: low-rank adapters (``peft``) on the backbone's ``--lora_target_modules`` plus the head; merged into
  plain weights when training ends (:func:`merge_lora`), so the saved model is a stock ``timm_wrapper`` model.
- ``partial:N``: the last N transformer blocks, the final norm and the head.

The mode and its trainable parameter count are recorded in the model's config (``cxr_vit_finetune``), which the
model card and ``report.json`` read.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

FINETUNE_MODES = ("full", "linear", "lora", "partial:N")
DEFAULT_LORA_TARGETS = "qkv"  # timm ViT attention's joint q/k/v projection


def parse_finetune(mode: str) -> tuple[str, int | None]:
    """``("partial", N)`` for ``partial:N``, ``(mode, None)`` for the others; a clear error otherwise."""
    kind, _, blocks = mode.partition(":")
    if kind in ("full", "linear", "lora") and not blocks:
        return kind, None
    if kind == "partial" and blocks.isdigit() and int(blocks) > 0:
        return kind, int(blocks)
    raise ValueError(f"--finetune must be one of {', '.join(FINETUNE_MODES)} (N > 0 blocks), got {mode!r}")


def apply_finetune(
    model: nn.Module,
    mode: str,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    lora_target_modules: str = DEFAULT_LORA_TARGETS,
) -> dict:
    """Freeze (and for ``lora``, adapt) a ``TimmWrapperForImageClassification`` in place for ``mode``.

    Returns what ``model.config.cxr_vit_finetune`` records: the mode and the trainable / total parameter counts.
    """
    kind, blocks = parse_finetune(mode)
    timm_model = model.timm_model
    head = timm_model.get_classifier()
    if kind == "lora":
        from peft import LoraConfig, inject_adapter_in_model  # the optional extra: pip install cxr-vit[lora]

        targets = [name.strip() for name in lora_target_modules.split(",") if name.strip()]
        config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets)
        inject_adapter_in_model(config, timm_model)  # marks only the adapters trainable
    elif kind != "full":
        timm_model.requires_grad_(False)
        if kind == "partial":
            stack = getattr(timm_model, "blocks", None)
            if stack is None or blocks > len(stack):
                depth = len(stack) if stack is not None else "no"
                raise ValueError(f"--finetune {mode}: {type(timm_model).__name__} has {depth} blocks")
            for block in list(stack)[-blocks:]:
                block.requires_grad_(True)
            for name in ("norm", "fc_norm"):
                if isinstance(getattr(timm_model, name, None), nn.Module):
                    getattr(timm_model, name).requires_grad_(True)
    head.requires_grad_(True)
    record = {
        "mode": mode,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
    }
    model.config.cxr_vit_finetune = record
    logger.info("--finetune %s: %d of %d parameters train", mode, record["trainable_parameters"],
                record["total_parameters"])  # fmt: skip
    return record


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA adapter into its base layer and put the plain layer back; returns how many were merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in adapted:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    return len(adapted)


class FeatureDataset(Dataset):
    """Pooled backbone features and labels of one split, the linear probe's training rows."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[index], "labels": self.labels[index]}


@torch.no_grad()
def pooled_features(model: nn.Module, loader: DataLoader, batch_transform, device: torch.device) -> FeatureDataset:
    """The frozen backbone's pooled features (before the head) of every batch, through the eval transform."""
    timm_model = model.timm_model.to(device).eval()
    features, labels = [], []
    for batch in loader:
        pixels = batch_transform(batch["pixel_values"].to(device), training=False)
        features.append(timm_model.forward_head(timm_model.forward_features(pixels), pre_logits=True).float().cpu())
        labels.append(batch["labels"].float())
    return FeatureDataset(torch.cat(features), torch.cat(labels))


def feature_datasets(
    model: nn.Module, role_datasets: dict, collator, batch_transform, batch_size: int, device: torch.device
) -> tuple[dict[str, FeatureDataset], float]:
    """Each role's images -> their pooled features, once (no augmentation: the backbone does not train);
    returns the datasets and the seconds it took."""
    start = time.perf_counter()
    features = {
        role: pooled_features(
            model, DataLoader(dataset, batch_size=batch_size, collate_fn=collator), batch_transform, device
        )
        for role, dataset in role_datasets.items()
    }
    seconds = time.perf_counter() - start
    logger.info("linear probe: features of %s cached in %.1f s",
                ", ".join(f"{role} ({len(data)})" for role, data in features.items()), seconds)  # fmt: skip
    return features, seconds
