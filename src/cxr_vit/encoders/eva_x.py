"""EVA-X checkpoints (github.com/hustvl/EVA-X: EVA-02-style ViT-Ti/S/B with RoPE, 16-px patches, 224 px) -> timm
``Eva`` names, built as ``eva02_{tiny,small,base}_patch14_224`` with the checkpoint's own patch size and grid.

EVA-X keeps EVA-02's original names: q and v biases beside the projections (``attn.q_bias`` / ``attn.v_bias``, no
k bias), a SwiGLU MLP as ``mlp.w12`` + ``mlp.w3`` (Ti/S, xformers' packed SwiGLU) or ``mlp.w1`` / ``mlp.w2`` /
``mlp.ffn_ln`` / ``mlp.w3`` (B, with separate ``attn.q_proj`` / ``k_proj`` / ``v_proj``), and the rotary
embedding's tables as buffers (``rope.freqs_cos`` / ``freqs_sin``). timm's ``eva02_*_patch14_224`` are 14-px
networks: built as they are, timm's filter would resample the 16-px patch embedding and the position grid and
the features would change. So the architecture is read from the tensors (patch size, grid, widths) and the
rotary embedding's reference grid from its tables, which timm then recomputes identically (checked here).

Pooling follows EVA-X's fine-tuning (``--use_mean_pooling``): the mean of the patch tokens through ``fc_norm``.
A pretraining (MIM) checkpoint's final ``norm`` has no place there (EVA-X leaves it unused and starts ``fc_norm``
fresh, as medical_mae does), and its ``mask_token`` and ``lm_head`` are for pretraining only. Tensors EVA-X's
fine-tuning network has no place for either (e.g. an ``attn.inner_attn_ln``) are reported as unexpected.
"""

from __future__ import annotations

import math
import re

import torch
from timm.layers.pos_embed_sincos import build_rotary_pos_embed

MARKERS = ("blocks.0.attn.q_bias", "blocks.0.mlp.w3.weight")
PRETRAINING_ONLY = re.compile(r"^(mask_token|lm_head\..*)$|(^|\.)rope\.")
# EVA-02 original names -> timm Eva's (the same renames as timm's own eva.checkpoint_filter_fn)
RENAMES = (
    (".mlp.ffn_ln.", ".mlp.norm."),
    (".attn.inner_attn_ln.", ".attn.norm."),
    (".mlp.w12.", ".mlp.fc1."),
    (".mlp.w1.", ".mlp.fc1_g."),
    (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.w3.", ".mlp.fc2."),
)
SIZES = {192: "tiny", 384: "small", 768: "base"}
HEAD_DIM = 64  # EVA-X Ti/S/B: 3/6/12 heads, used when the checkpoint has no rotary tables to read it from
ROPE_TEMPERATURE = 10000.0
ROPE_TOLERANCE = 1e-5
# EVA-X's fine-tuning normalization (classification/utils/datasets.py, build_transform, 'eva' models)
MEAN, STD = (0.49185243,) * 3, (0.28509309,) * 3


def matches(keys: set[str]) -> bool:
    return all(marker in keys for marker in MARKERS)


def convert(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm Eva names; pretraining-only tensors and the rotary tables (timm computes them) left out."""
    separate_qkv = "blocks.0.attn.q_proj.weight" in state_dict
    out = {}
    for key, value in state_dict.items():
        if PRETRAINING_ONLY.search(key):
            continue
        for old, new in RENAMES:
            key = key.replace(old, new)
        if separate_qkv:
            key = re.sub(r"\.attn\.(q|v)_bias$", r".attn.\1_proj.bias", key)
        out[key] = value
    return out


def architecture(
    converted: dict[str, torch.Tensor], config: dict | None, found: dict[str, torch.Tensor]
) -> tuple[str, dict]:
    """``eva02_{size}_patch14_224`` with EVA-X's patch size, image size, heads, MLP and rotary reference grid."""
    embed_dim, _, patch_size, _ = converted["patch_embed.proj.weight"].shape
    grid = math.isqrt(converted["pos_embed"].shape[1] - 1)
    separate_qkv = "blocks.0.attn.q_proj.weight" in converted
    if "blocks.0.mlp.fc1.weight" in converted:  # packed SwiGLU (Ti/S): gate and value in one projection
        hidden = converted["blocks.0.mlp.fc1.weight"].shape[0] // 2
    else:
        hidden = converted["blocks.0.mlp.fc1_g.weight"].shape[0]
    cos, sin = _rope_tables(found)
    head_dim = cos.shape[-1] if cos is not None else HEAD_DIM
    reference = _rope_reference_grid(cos, sin, grid, head_dim) if cos is not None else grid
    kwargs = {
        "embed_dim": embed_dim,
        "depth": len({key.split(".")[1] for key in converted if key.startswith("blocks.")}),
        "num_heads": embed_dim // head_dim,
        "patch_size": patch_size,
        "img_size": patch_size * grid,
        "mlp_ratio": hidden / embed_dim,
        "qkv_fused": not separate_qkv,
        "swiglu_mlp": True,
        "scale_mlp": "blocks.0.mlp.norm.weight" in converted,
        "use_rot_pos_emb": True,
        "ref_feat_shape": (reference, reference),
    }
    size = SIZES.get(embed_dim) or ("base" if separate_qkv else "tiny")  # other widths: the nearest layout's name
    return f"eva02_{size}_patch14_224", kwargs


def _rope_tables(found: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The pretraining network's rotary tables (top level, or the first block's copy in fine-tuned files)."""
    for prefix in ("rope.", "blocks.0.attn.rope."):
        if prefix + "freqs_cos" in found and prefix + "freqs_sin" in found:
            return found[prefix + "freqs_cos"], found[prefix + "freqs_sin"]
    return None, None


def _rope_reference_grid(cos: torch.Tensor, sin: torch.Tensor, grid: int, head_dim: int) -> int:
    """The grid the rotary positions were scaled to (EVA's ``pt_seq_len``; timm's ``ref_feat_shape``).

    EVA scales positions by ``pt_seq_len / grid``; the lowest frequency band of the second token's column angle
    gives that scale without wrapping around. Then timm's tables for that reference must equal the checkpoint's.
    """
    bands = head_dim // 2
    lowest = ROPE_TEMPERATURE ** (-(bands - 2) / bands)
    angle = math.atan2(sin[1, -1].item(), cos[1, -1].item())
    reference = round(angle / lowest * grid)
    timm_sin, timm_cos = build_rotary_pos_embed(
        [grid, grid], dim=head_dim, in_pixels=False, ref_feat_shape=[reference, reference], temperature=ROPE_TEMPERATURE
    )
    tolerance = max(ROPE_TOLERANCE, 4 * torch.finfo(cos.dtype).eps)  # tables saved in half precision round more
    cos, sin = cos.float(), sin.float()
    if cos.shape != timm_cos.shape or max((cos - timm_cos).abs().max(), (sin - timm_sin).abs().max()) > tolerance:
        raise ValueError(
            f"EVA-X rotary tables of shape {tuple(cos.shape)} do not match timm's for a {grid}x{grid} grid "
            f"(reference {reference}); this checkpoint's rotary embedding is not EVA-02's"
        )
    return reference
