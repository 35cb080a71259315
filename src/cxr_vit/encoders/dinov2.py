"""transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` weights (RAD-DINO's format) -> timm
``vit_*_patch14_dinov2`` / ``vit_*_patch14_reg4_dinov2`` names.

transformers keeps q, k and v as separate projections (``attention.q_proj`` since transformers 5,
``attention.attention.query`` in the checkpoints published before, RAD-DINO's included); timm has one ``qkv``.
Registers follow timm's own DINOv2 conversion (``no_embed_class``: the class token's position folded in).
"""

from __future__ import annotations

import re

import torch

# The *ForImageClassification models keep the backbone under these attributes.
BACKBONE_PREFIXES = ("dinov2.", "dinov2_with_registers.")
PATCH_WEIGHT = "embeddings.patch_embeddings.projection.weight"
# block-level names: transformers (either naming) -> timm
BLOCK_RENAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",
}
QKV_NAMES = (
    ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
)
SIZES = {384: "small", 768: "base", 1024: "large"}


def matches(keys: set[str]) -> bool:
    return any(prefix + PATCH_WEIGHT in keys for prefix in ("", *BACKBONE_PREFIXES))


def convert(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm-named weights; a classifier of ``Dinov2ForImageClassification`` is left out."""
    for prefix in BACKBONE_PREFIXES:
        if prefix + PATCH_WEIGHT in state_dict:
            state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    source = dict(state_dict)
    if any(".mlp.weights_in." in key or ".mlp.w12." in key for key in source):
        raise ValueError("DINOv2 with a SwiGLU MLP (ViT-g) has no timm ViT equivalent here; use ViT-S/B/L checkpoints")
    out = {
        "patch_embed.proj.weight": source.pop(PATCH_WEIGHT),
        "patch_embed.proj.bias": source.pop("embeddings.patch_embeddings.projection.bias"),
    }
    cls_token, pos_embed = source.pop("embeddings.cls_token"), source.pop("embeddings.position_embeddings")
    source.pop("embeddings.mask_token", None)  # for masked-image pretraining only
    if "embeddings.register_tokens" in source:
        out["reg_token"] = source.pop("embeddings.register_tokens")
        out["cls_token"], out["pos_embed"] = cls_token + pos_embed[:, :1], pos_embed[:, 1:]
    else:
        out["cls_token"], out["pos_embed"] = cls_token, pos_embed
    for side in ("weight", "bias"):
        if f"layernorm.{side}" in source:
            out[f"norm.{side}"] = source.pop(f"layernorm.{side}")
    blocks = sorted({int(m.group(1)) for key in source if (m := re.match(r"encoder\.layer\.(\d+)\.", key))})
    for index in blocks:
        layer, block = f"encoder.layer.{index}.", f"blocks.{index}."
        for names in QKV_NAMES:
            for side in ("weight", "bias"):
                parts = [f"{layer}{name}.{side}" for name in names]
                if all(part in source for part in parts):
                    out[f"{block}attn.qkv.{side}"] = torch.cat([source.pop(part) for part in parts])
        for ours, theirs in BLOCK_RENAMES.items():
            for side in ("weight", "bias", ""):
                key = f"{layer}{ours}" + (f".{side}" if side else "")
                if key in source:
                    out[f"{block}{theirs}" + (f".{side}" if side else "")] = source.pop(key)
    out.update(source)  # anything left keeps its name and is reported as unexpected
    return out


def architecture(
    converted: dict[str, torch.Tensor], config: dict | None, found: dict[str, torch.Tensor]
) -> tuple[str, dict]:
    """timm architecture and keywords of converted weights, from the folder's ``config.json`` where there is one."""
    config = config or {}
    embed_dim = converted["pos_embed"].shape[-1]
    patch_size = converted["patch_embed.proj.weight"].shape[-1]
    depth = len({key.split(".")[1] for key in converted if key.startswith("blocks.")})
    registers = converted["reg_token"].shape[1] if "reg_token" in converted else 0
    grid_tokens = converted["pos_embed"].shape[1] - (0 if registers else 1)
    kwargs = {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": config.get("num_attention_heads", embed_dim // 64),
        "patch_size": patch_size,
        "img_size": config.get("image_size", patch_size * round(grid_tokens**0.5)),
        "mlp_ratio": converted["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
    }
    if registers:
        kwargs.update(reg_tokens=registers, no_embed_class=True)
    size = SIZES.get(embed_dim, "base")
    return f"vit_{size}_patch14_{'reg4_' if registers else ''}dinov2", kwargs
