"""Checkpoint formats of public encoders, detected from their keys, and their conversion to timm names.

Each format maps its checkpoint's keys to the timm architecture that computes the same function, so the
fine-tuned model stays a stock ``timm_wrapper`` model. Formats whose keys are already timm's (timm itself,
MAE, DeiT) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import clip, dinov2, eva_x
from .sources import CONFIG_FILE, OPEN_CLIP_CONFIG_FILE

Converter = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
# (converted weights, the config file beside them, the weights as found) -> (timm architecture, its keywords)
ArchitectureReader = Callable[[dict[str, torch.Tensor], dict | None, dict[str, torch.Tensor]], tuple[str, dict]]
SAMPLE_KEYS = 12  # checkpoint keys shown when a layout is not recognised


@dataclass(frozen=True)
class CheckpointFormat:
    """A published layout: how to recognise it, convert it, and which timm architecture it needs."""

    name: str
    description: str
    matches: Callable[[set[str]], bool]
    convert: Converter
    architecture: ArchitectureReader | None = None  # None: the user names it with --model_name
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (mean, std) the encoder was tuned with
    config_file: str = CONFIG_FILE  # the file beside the weights that its architecture reader reads


def _timm_architecture(
    converted: dict[str, torch.Tensor], config: dict | None, found: dict[str, torch.Tensor]
) -> tuple[str, dict]:
    architecture = (config or {}).get("architecture")  # timm's save_for_hf config.json
    if not architecture:
        raise ValueError(
            "a timm-style checkpoint does not say its architecture: name it with --model_name (e.g. "
            "vit_base_patch16_224 for MAE ViT-B/16) and give the file with --pretrained_weights"
        )
    return architecture, dict((config or {}).get("model_args") or {})


FORMATS = (
    CheckpointFormat(
        "transformers-dinov2",
        "transformers Dinov2Model (RAD-DINO)",
        dinov2.matches,
        dinov2.convert,
        dinov2.architecture,
    ),
    CheckpointFormat(
        "open_clip-timm",
        "open_clip image tower with a timm trunk (BiomedCLIP)",
        clip.matches_open_clip_timm,
        clip.convert_open_clip_timm,
        clip.open_clip_timm_architecture,
        config_file=OPEN_CLIP_CONFIG_FILE,
    ),
    CheckpointFormat(
        "eva-x",
        "EVA-X (EVA-02 layout: q/v biases, SwiGLU w1/w2/w3, RoPE)",
        eva_x.matches,
        eva_x.convert,
        eva_x.architecture,
        (eva_x.MEAN, eva_x.STD),
    ),
    CheckpointFormat(
        "openai-clip",
        "OpenAI-CLIP image tower (CheXzero)",
        clip.matches_openai,
        clip.convert_openai,
        clip.openai_architecture,
    ),
)
TIMM_FORMAT = CheckpointFormat(
    "timm",
    "timm-style keys (timm, MAE, DeiT, timm's EVA-02)",
    lambda keys: True,
    dict,
    _timm_architecture,
)


def detect_format(state_dict: dict[str, torch.Tensor]) -> CheckpointFormat:
    """The first of :data:`FORMATS` whose keys match, else :data:`TIMM_FORMAT` (checked later by the load)."""
    keys = set(unwrap_module(state_dict))
    return next((fmt for fmt in FORMATS if fmt.matches(keys)), TIMM_FORMAT)


def unwrap_module(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without DDP's ``module.`` prefix, when every key has it."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key.removeprefix("module."): value for key, value in state_dict.items()}
    return state_dict


def convert_checkpoint(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], CheckpointFormat]:
    """``(timm-named state dict, its format)``; raises ``ValueError`` where a format cannot be converted.

    timm-style keys are returned as they are: the load strips their prefixes and reports what it stripped.
    """
    fmt = detect_format(state_dict)
    return (state_dict if fmt is TIMM_FORMAT else fmt.convert(unwrap_module(state_dict))), fmt


def sample_keys(state_dict: dict[str, torch.Tensor], count: int = SAMPLE_KEYS) -> str:
    """A few of the checkpoint's keys with their shapes, for errors about layouts we do not know."""
    keys = sorted(state_dict)
    step = max(1, len(keys) // count)
    shown = [f"{key} {tuple(state_dict[key].shape)}" for key in keys[::step][:count]]
    return ", ".join(shown) + (f" ... ({len(keys)} keys)" if len(keys) > count else "")
