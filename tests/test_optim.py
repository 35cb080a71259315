"""Optimizer parameter groups: layer-wise LR decay read back from a real AdamW, and who gets weight decay."""

from __future__ import annotations

import pytest
import torch
from transformers import get_scheduler

from cxr_vit.modeling import create_model
from cxr_vit.training.optim import build_param_groups, describe_param_groups, format_param_groups

LR, WD, DECAY = 1e-3, 0.05, 0.5

# Small random-init members of each family the recipe supports: (architecture, image_size, timm kwargs,
# number of layer-decay layers). ConvNeXt takes no img_size keyword, so create_model gets image_size=None.
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", 32, {"depth": 2}, 4),  # embeddings, block 0, block 1 (+ norm), head
    "deit": ("deit_tiny_patch16_224", 32, {"depth": 2}, 4),
    # Swin: patch embedding, 4 stages, head; ConvNeXt: stem, 4 stages, head
    "swin": ("swin_tiny_patch4_window7_224", 56, {"depths": (1, 1, 1, 1), "embed_dim": 24}, 6),
    "convnext": ("convnext_atto", None, {"depths": (1, 1, 1, 1)}, 6),
    "eva02": ("eva02_tiny_patch14_224", 28, {"depth": 2}, 4),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    name, size, kwargs, num_layers = FAMILIES[request.param]
    return create_model(name, pretrained=False, image_size=size, model_kwargs=kwargs), num_layers


@pytest.fixture(scope="module")
def vit():
    name, size, kwargs, _ = FAMILIES["vit"]
    return create_model(name, pretrained=False, image_size=size, model_kwargs=kwargs)


def optimizer_lrs(model, groups) -> dict[str, tuple[float, float]]:
    """Parameter name -> (lr, weight_decay) as a real AdamW holds them."""
    optimizer = torch.optim.AdamW(groups, lr=123.0, weight_decay=123.0)  # group values must win over these
    names = {param: name for name, param in model.named_parameters()}
    return {names[p]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_vit_layer_decay_layer_by_layer(vit):
    settings = optimizer_lrs(vit, build_param_groups(vit, LR, WD, layer_decay=DECAY))
    layer_of = {"cls_token": 0, "pos_embed": 0, "patch_embed.": 0, "blocks.0.": 1, "blocks.1.": 2, "norm.": 2}
    layer_of["head."] = 3
    for name, (lr, _) in settings.items():
        layer = next(layer for prefix, layer in layer_of.items() if name.startswith("timm_model." + prefix))
        assert lr == pytest.approx(LR * DECAY ** (3 - layer)), name
    assert settings["timm_model.head.weight"][0] == LR


def test_no_weight_decay_for_tokens_biases_and_norms(vit):
    for layer_decay in (None, DECAY):
        settings = optimizer_lrs(vit, build_param_groups(vit, LR, WD, layer_decay=layer_decay))
        for name, (_, weight_decay) in settings.items():
            off = name.endswith((".bias", "cls_token", "pos_embed")) or ".norm" in name
            assert weight_decay == (0.0 if off else WD), name
        assert settings["timm_model.blocks.0.attn.qkv.weight"][1] == WD


def test_without_layer_decay_two_groups_at_the_base_lr(vit):
    groups = build_param_groups(vit.timm_model, LR, WD)
    assert [g["group_name"] for g in groups] == ["decay", "no_decay"]
    assert all(g["lr"] == LR for g in groups)
    assert "timm_model." not in groups[0]["param_names"][0]  # names of the module passed


def test_lambda_lr_keeps_the_layer_ratios(vit):
    """transformers' schedulers scale each group's initial lr: the per-layer ratios hold at every step."""
    optimizer = torch.optim.AdamW(build_param_groups(vit, LR, WD, layer_decay=DECAY))
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    lrs = scheduler.get_last_lr()
    assert lrs[0] == max(lrs)  # group 0 (what the Trainer logs) is the head's
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        assert lr == pytest.approx(lrs[0] * DECAY ** (3 - group["layer_id"]))
        assert "lr_scale" not in group  # timm's schedulers would apply it a second time


def test_every_trainable_parameter_once_and_frozen_ones_left_out(family):
    model, num_layers = family
    groups = build_param_groups(model, LR, WD, layer_decay=DECAY)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {p for p in model.parameters() if p.requires_grad}
    torch.optim.AdamW(groups)  # accepted as is

    layers = sorted({g["layer_id"] for g in groups})
    assert layers == list(range(num_layers))
    for group in groups:
        assert group["lr"] == pytest.approx(LR * DECAY ** (num_layers - 1 - group["layer_id"]))
        for name, param in zip(group["param_names"], group["params"], strict=True):
            assert (group["weight_decay"] == 0.0) == (param.ndim <= 1 or _no_wd(model, name)), name

    first = next(iter(model.parameters()))
    first.requires_grad_(False)
    try:
        assert all(first is not p for g in build_param_groups(model, LR, WD, DECAY) for p in g["params"])
    finally:
        first.requires_grad_(True)


def _no_wd(model, name: str) -> bool:
    skip = getattr(model.timm_model, "no_weight_decay", set)()  # ConvNeXt has none
    return name.removeprefix("timm_model.") in skip


def test_describe_lists_every_group(vit):
    groups = build_param_groups(vit, LR, WD, layer_decay=DECAY)
    rows = describe_param_groups(groups)
    assert [r["group"] for r in rows][:2] == ["layer_3_decay", "layer_3_no_decay"]
    assert sum(r["parameters"] for r in rows) == sum(p.numel() for p in vit.parameters())
    assert sum(r["tensors"] for r in rows) == len(list(vit.parameters()))
    head = rows[0]
    assert (head["layer_id"], head["lr"], head["weight_decay"], head["tensors"]) == (3, LR, WD, 1)
    assert head["parameters"] == 15 * 192
    # an optimizer's own param_groups describe the same way
    optimizer = torch.optim.AdamW(groups)
    assert describe_param_groups(optimizer.param_groups) == rows
    table = format_param_groups(groups)
    assert len(table.splitlines()) == len(groups) + 1 and "timm_model.pos_embed" not in table.splitlines()[1]


def test_bad_layer_decay_says_what_is_allowed(vit):
    with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\]"):
        build_param_groups(vit, LR, WD, layer_decay=1.5)


def test_no_weight_decay_at_all_gives_one_group_per_layer(vit):
    groups = build_param_groups(vit, LR, 0.0, layer_decay=DECAY)
    assert [g["group_name"] for g in groups] == [f"layer_{i}_no_decay" for i in (3, 2, 1, 0)]
    assert sum(len(g["params"]) for g in groups) == len(list(vit.parameters()))
    assert [g["group_name"] for g in build_param_groups(vit, LR, 0.0)] == ["no_decay"]
