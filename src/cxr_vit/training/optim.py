"""Optimizer parameter groups: weight decay only where it regularises, and layer-wise learning-rate decay.

Fine-tuning recipes for ViTs (BEiT, MAE, timm's train.py) decay the learning rate layer by layer from the head
down (``layer_decay ** (num_layers - 1 - layer_id)``), so the pretrained early layers move least, and keep
weight decay off biases, norms, position embeddings and class/register tokens. timm builds these groups
(``param_groups_layer_decay`` / ``param_groups_weight_decay``, layers from the model's ``group_matcher``); we
take its groups and fold each group's ``lr_scale`` into its ``lr``.

Why fold: timm's schedulers multiply a group's ``lr_scale`` in on every step, but transformers' Trainer uses
torch's ``LambdaLR`` (``get_scheduler``), which scales each group's *initial* ``lr`` and ignores ``lr_scale``.
The groups here carry the scaled ``lr`` and no ``lr_scale`` key (timm's schedulers would apply it twice); the
scale is kept under ``layer_scale`` for logging only. They are ordered head first, because the Trainer logs
``learning_rate`` from group 0: the head's scale is 1, so the logged value stays the base schedule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from timm.models import group_parameters
from timm.optim import auto_group_layers, param_groups_layer_decay, param_groups_weight_decay
from torch import nn


def build_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    no_weight_decay: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim.AdamW(groups)``, each with its final ``lr`` and ``weight_decay``.

    Args:
        model: a ``TimmWrapperForImageClassification`` or the timm model itself (``model.timm_model``).
        lr: base learning rate, the head's; lower layers get ``lr * layer_decay ** (num_layers - 1 - layer_id)``.
        weight_decay: for weight matrices and kernels; 0 for 1-D tensors (biases, norms, layer scales) and for
            the names in the timm model's ``no_weight_decay()`` (position embeddings, class/register tokens, ...).
        layer_decay: e.g. 0.65-0.75 for ViT-B, lower for shallower models; layers are timm's
            ``group_matcher(coarse=False)`` (ViT: 0 = patch/pos embeddings and tokens, 1..depth = blocks, the
            final norm with the last block, depth + 1 = the head). ``None``: two groups, decay / no decay.
        no_weight_decay: more timm parameter names (fnmatch patterns) to keep out of weight decay.

    Each group has ``params``, ``lr``, ``weight_decay`` and, for :func:`describe_param_groups`, ``group_name``,
    ``layer_id`` (``None`` without layer decay), ``layer_scale`` (already in ``lr``) and ``param_names``
    (the names in ``model``; torch optimizers keep this key in their state dict). Frozen parameters are left out.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1] (e.g. 0.75), or None for no layer decay; got {layer_decay}")
    timm_model = getattr(model, "timm_model", model)
    prefix = _name_prefix(model, timm_model)
    names = {param: name for name, param in timm_model.named_parameters()}
    skip_list = set(getattr(timm_model, "no_weight_decay", set)()) | set(no_weight_decay)

    if layer_decay is None:
        timm_groups = param_groups_weight_decay(timm_model, weight_decay, no_weight_decay_list=skip_list)
        layer_of: dict[str, int] = {}
    else:
        timm_groups = param_groups_layer_decay(
            timm_model, weight_decay, no_weight_decay_list=skip_list, layer_decay=layer_decay
        )
        layer_of = _layer_map(timm_model)

    groups: dict[str, dict[str, Any]] = {}
    for timm_group in timm_groups:
        params = list(timm_group["params"])
        decay_name = "decay" if timm_group["weight_decay"] else "no_decay"
        if layer_decay is None:
            layer_id, group_name = None, decay_name
        else:
            # timm builds one group per (layer, decay) and puts parameters its layer map does not name on top
            layer_id = layer_of.get(names[params[0]], max(layer_of.values()))
            group_name = f"layer_{layer_id}_{decay_name}"
        if group_name in groups:  # weight_decay=0: timm's decay and no-decay groups of a layer are the same
            groups[group_name]["params"] += params
            groups[group_name]["param_names"] += [prefix + names[param] for param in params]
            continue
        scale = float(timm_group.get("lr_scale", 1.0))
        groups[group_name] = {
            "params": params,
            "lr": lr * scale,
            "weight_decay": float(timm_group["weight_decay"]),
            "group_name": group_name,
            "layer_id": layer_id,
            "layer_scale": scale,
            "param_names": [prefix + names[param] for param in params],
        }
    return sorted(groups.values(), key=lambda group: (-(group["layer_id"] or 0), group["group_name"]))


def describe_param_groups(groups: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per group (of :func:`build_param_groups`, or an optimizer's ``param_groups``) for logging.

    Rows: ``group``, ``layer_id``, ``lr``, ``layer_scale``, ``weight_decay``, ``tensors``, ``parameters`` and
    ``first``/``last`` parameter names, so a wrong grouping (a block in the head group, a bias with decay)
    shows at a glance.
    """
    rows = []
    for index, group in enumerate(groups):
        names = group.get("param_names") or []
        rows.append(
            {
                "group": group.get("group_name", str(index)),
                "layer_id": group.get("layer_id"),
                "lr": float(group["lr"]),
                "layer_scale": group.get("layer_scale"),
                "weight_decay": float(group["weight_decay"]),
                "tensors": len(group["params"]),
                "parameters": sum(param.numel() for param in group["params"]),
                "first": names[0] if names else "",
                "last": names[-1] if names else "",
            }
        )
    return rows


def format_param_groups(groups: Iterable[dict[str, Any]]) -> str:
    """:func:`describe_param_groups` as a fixed-width table, one line per group."""
    rows = describe_param_groups(groups)
    lines = [f"{'group':<20} {'lr':>10} {'wd':>8} {'tensors':>7} {'params':>11}  names"]
    for row in rows:
        span = row["first"] if row["first"] == row["last"] else f"{row['first']} .. {row['last']}"
        lines.append(
            f"{row['group']:<20} {row['lr']:>10.3g} {row['weight_decay']:>8.3g} {row['tensors']:>7} "
            f"{row['parameters']:>11,}  {span}"
        )
    return "\n".join(lines)


def _layer_map(timm_model: nn.Module) -> dict[str, int]:
    """Parameter name -> layer id, as ``param_groups_layer_decay`` computes it (to name its groups)."""
    if hasattr(timm_model, "group_matcher"):
        return group_parameters(timm_model, timm_model.group_matcher(coarse=False), reverse=True)
    return auto_group_layers(timm_model)


def _name_prefix(model: nn.Module, timm_model: nn.Module) -> str:
    """``timm_model.`` for the transformers wrapper; checks no trainable parameter lives outside the timm model."""
    if timm_model is model:
        return ""
    prefix = next(name for name, module in model.named_modules() if module is timm_model) + "."
    outside = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(prefix)]
    if outside:
        raise ValueError(
            f"{type(model).__name__} has trainable parameters outside its timm model, which these groups would "
            f"leave out of the optimizer: {outside}. Build the groups from the module that owns all of them."
        )
    return prefix
