"""CLIP image towers -> timm ViT names: open_clip towers whose trunk is a timm model (BiomedCLIP), and
OpenAI-CLIP towers (``visual.transformer.resblocks.*``, CheXzero's format).

Both drop the CLIP projection into the joint image-text space (``visual.head.proj`` / ``visual.proj``): a
classifier is trained on the tower's pooled features instead.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import _convert_openai_clip

TRUNK_PREFIX = "visual.trunk."
OPENAI_PREFIX = "visual."
OPENAI_MARKER = "visual.transformer.resblocks.0.attn.in_proj_weight"


def matches_open_clip_timm(keys: set[str]) -> bool:
    return any(key.startswith(TRUNK_PREFIX) for key in keys)


def convert_open_clip_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk's own (timm) names; the text tower and the projection head are left out."""
    return {k.removeprefix(TRUNK_PREFIX): v for k, v in state_dict.items() if k.startswith(TRUNK_PREFIX)}


def open_clip_timm_architecture(
    converted: dict[str, torch.Tensor], config: dict | None, found: dict[str, torch.Tensor]
) -> tuple[str, dict]:
    """The trunk's timm name from ``open_clip_config.json`` (``model_cfg.vision_cfg.timm_model_name``)."""
    vision = ((config or {}).get("model_cfg") or {}).get("vision_cfg") or {}
    if "timm_model_name" not in vision:
        raise ValueError(
            "an open_clip timm trunk without open_clip_config.json beside it: name its timm architecture with "
            "--model_name (e.g. vit_base_patch16_224 for BiomedCLIP) and the file with --pretrained_weights"
        )
    size = vision.get("image_size")
    return vision["timm_model_name"], ({"img_size": size} if isinstance(size, int) else {})


def matches_openai(keys: set[str]) -> bool:
    return OPENAI_MARKER in keys


def convert_openai(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's own OpenAI-CLIP key conversion, less the projection (which it would make a 512-way head)."""
    converted = _convert_openai_clip(state_dict, model=None, prefix=OPENAI_PREFIX)  # model is unused there
    return {k: v for k, v in converted.items() if not k.startswith("head.")}


def openai_architecture(
    converted: dict[str, torch.Tensor], config: dict | None, found: dict[str, torch.Tensor]
) -> tuple[str, dict]:
    """The tower's shape read from its tensors; OpenAI's CLIP uses QuickGELU, hence timm's ``*_clip_quickgelu``.

    Towers trained with GELU in the same layout (open_clip's own non-OpenAI ViTs) need ``--model_name
    vit_base_patch16_clip_224`` (or another ``vit_*_clip_*``) given explicitly.
    """
    width, _, patch_size, _ = converted["patch_embed.proj.weight"].shape
    grid = round((converted["pos_embed"].shape[1] - 1) ** 0.5)
    return "vit_base_patch16_clip_quickgelu_224", {
        "embed_dim": width,
        "depth": len({key.split(".")[1] for key in converted if key.startswith("blocks.")}),
        "num_heads": width // 64,
        "patch_size": patch_size,
        "img_size": patch_size * grid,
        "mlp_ratio": converted["blocks.0.mlp.fc1.weight"].shape[0] / width,
    }
