"""Initialise the backbone from a local research checkpoint (MAE, DINO, an earlier fine-tune, ...).

Such files come in many shapes: torch pickles or safetensors, the state dict at the top or under ``model`` /
``state_dict`` / ``module``, keys prefixed by DDP's ``module.`` or by an ``encoder.`` / ``backbone.`` attribute, a
1000-class ImageNet head, position embeddings for another resolution. A silent mismatch is the worst outcome:
``load_state_dict(strict=False)`` of a checkpoint that matches nothing trains from random weights without a word;
so is a tensor quietly resampled to another shape (a 16-px patch embedding into a 14-px model computes another
function). So :func:`load_backbone_checkpoint` adapts what it can, records every shape it changed, and raises when
more than a few backbone tensors stay unloaded or when a change is lossy. Other libraries' layouts (transformers
``Dinov2Model``, open_clip and OpenAI-CLIP towers, EVA-X) are first converted to timm names by :mod:`cxr_vit.encoders`,
which detects them from the keys; the result names the format.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from .encoders.formats import FORMATS, TIMM_FORMAT, convert_checkpoint, sample_keys

# Where a state dict may sit inside a checkpoint, looked up in this order, at most twice ({"model": {"module":..}}).
CONTAINER_KEYS = ("model", "state_dict", "module")
# Key prefixes stripped, alone or chained (``module.encoder.``), only if that makes more keys name a parameter
# or buffer of the model: DDP/DataParallel, Lightning/MMCV-style wrappers, SSL encoders, our TimmWrapper.
STRIP_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "timm_model.")
MAX_LISTED = 20  # keys listed per kind in errors and summaries


class CheckpointLoadError(ValueError):
    """A backbone checkpoint that cannot be used: missing, not a state dict, unsafe to unpickle."""


class CheckpointMismatchError(CheckpointLoadError):
    """The checkpoint leaves more backbone tensors unloaded than allowed: it is not for this architecture."""


class CheckpointResampledError(CheckpointLoadError):
    """Loading would resample a tensor other than the position grid (e.g. a 16-px patch embedding to 14 px), so the
    model would not compute the checkpoint's function; ``allow_resampled=True`` accepts it."""


@dataclass
class CheckpointLoadResult:
    """What :func:`load_backbone_checkpoint` found and did; ``summary()`` is meant for the training log.

    Keys are timm names (after prefix stripping). ``missing`` are non-head tensors of the model left at their
    initial values (including ``mismatched`` ones); ``missing_head`` are the classifier's, which a backbone
    checkpoint is not expected to provide. Every tensor loaded in another shape than the file's is in
    ``resampled`` (a position grid interpolated), ``reshaped`` (the same values) or ``lossy`` (anything else).
    """

    path: str
    container: str | None = None  # dotted path of the state dict in the file; None: the top level
    format: str = TIMM_FORMAT.name  # cxr_vit.encoders.formats: the layout detected from the keys
    format_description: str = TIMM_FORMAT.description
    stripped_prefixes: list[str] = field(default_factory=list)
    timm_filter: str | None = None  # timm's checkpoint_filter_fn used to convert the keys, if it helped
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    missing_head: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)  # checkpoint head tensors of another shape
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint shape vs model shape"
    resampled: list[str] = field(default_factory=list)  # position grids interpolated to the model's grid
    reshaped: list[str] = field(default_factory=list)  # same values in another shape (e.g. a linear patch proj as conv)
    lossy: list[str] = field(default_factory=list)  # other shape changes: the loaded tensor is not the checkpoint's
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        where = f"under {self.container!r}" if self.container else "at the top level"
        lines = [
            f"{self.path}: state dict {where}, format {self.format} ({self.format_description}), "
            f"{len(self.loaded)} of its tensors fit the model"
        ]
        if self.stripped_prefixes:
            lines.append(f"stripped key prefixes: {', '.join(self.stripped_prefixes)}")
        if self.timm_filter:
            lines.append(f"keys converted by {self.timm_filter}")
        for label, keys in (
            ("position grid resampled", self.resampled),
            ("reshaped, values kept", self.reshaped),
            ("RESAMPLED, not the checkpoint's values", self.lossy),
            ("dropped head (shape differs)", self.dropped_head),
            ("head left at init", self.missing_head),
            ("shape mismatch, not loaded", self.mismatched),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
        ):
            if keys:
                lines.append(f"{label} ({len(keys)}): {_listing(keys)}")
        lines.extend(self.notes)
        return "\n".join(lines)


def load_backbone_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    max_missing: int = 4,
    container: str | None = None,
    use_timm_filter: bool = True,
    allow_resampled: bool = False,
) -> CheckpointLoadResult:
    """Load a local checkpoint into a timm model (or a ``TimmWrapperForImageClassification``'s ``timm_model``).

    Args:
        model: the timm model to initialise in place; a transformers ``TimmWrapper`` is unwrapped.
        path: ``.safetensors`` (read with ``safetensors.torch.load_file``), anything else with ``torch.load``
            in ``weights_only`` mode (no code in the pickle runs).
        max_missing: most non-head model tensors the checkpoint may leave unloaded before this raises
            :class:`CheckpointMismatchError` (an MAE encoder, for instance, has no ``fc_norm``: 2 tensors).
            The model is untouched when it raises.
        container: dotted path of the state dict in the file (e.g. ``"model_ema"`` or ``"teacher"``); default:
            the top level, or the first of ``model`` / ``state_dict`` / ``module`` found, once more inside it.
        use_timm_filter: also try the architecture's own ``checkpoint_filter_fn`` (MAE/DINOv2/OpenCLIP/original
            Swin and ConvNeXt layouts, patch-embedding and relative-position resizing); it is used only if it
            makes more tensors fit the model.
        allow_resampled: load tensors that had to be resampled to another shape than the position grid (timm's
            filters resample a patch embedding of another patch size): the model then does not compute the
            checkpoint's function, so by default this raises :class:`CheckpointResampledError` and loads nothing.

    Then: prefixes of :data:`STRIP_PREFIXES` are stripped where that makes keys match; ``pos_embed`` of
    another grid is resampled with timm's ``resample_abs_pos_embed`` keeping the class/register tokens; a
    classifier (``pretrained_cfg["classifier"]``) of another shape, e.g. a 1000-class head, is dropped and the
    model's own head kept; other tensors of another shape are not loaded and count as missing.
    """
    timm_model = getattr(model, "timm_model", model)
    result = CheckpointLoadResult(path=str(path))
    state_dict, result.container = read_state_dict(path, container)
    original_keys = sample_keys(state_dict)
    try:
        state_dict, fmt = convert_checkpoint(state_dict)
    except (KeyError, ValueError) as err:
        raise CheckpointLoadError(f"{path}: cannot convert the checkpoint: {err}\nits keys: {original_keys}") from err
    result.format, result.format_description = fmt.name, fmt.description

    model_state = timm_model.state_dict()
    state_dict, result.stripped_prefixes = _strip_prefixes(state_dict, model_state)
    found = dict(state_dict)
    if use_timm_filter:
        state_dict = _apply_timm_filter(state_dict, timm_model, model_state, result)
    state_dict = _resample_pos_embed(state_dict, timm_model)
    _record_shape_changes(found, state_dict, result)

    head_keys = _head_keys(timm_model, model_state)
    to_load = {}
    for key, value in state_dict.items():
        if key not in model_state:
            result.unexpected.append(key)
        elif value.shape == model_state[key].shape:
            to_load[key] = value
        elif key in head_keys:
            result.dropped_head.append(key)
        else:
            result.mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(model_state[key].shape)}")
    unloaded = [key for key in model_state if key not in to_load]
    result.missing = [key for key in unloaded if key not in head_keys]
    result.missing_head = [key for key in unloaded if key in head_keys]

    result.loaded = list(to_load)
    if len(result.missing) > max_missing:
        raise CheckpointMismatchError(
            f"{path}: the checkpoint would leave {len(result.missing)} of the model's "
            f"{len(model_state) - len(head_keys)} backbone tensors unloaded (max_missing={max_missing}), so it is "
            f"not a checkpoint of {type(timm_model).__name__} with this configuration; nothing was loaded.\n"
            f"{result.summary()}\n"
            f"A sample of the checkpoint's keys: {original_keys}\n"
            f"Known layouts: {', '.join(f.description for f in FORMATS)}, or timm's own names.\n"
            "Check the architecture and its arguments (depth, patch size, embed dim), pick the state dict with "
            "container=..., or raise max_missing if the listed tensors may start from random weights."
        )
    if result.lossy and not allow_resampled:
        raise CheckpointResampledError(
            f"{path}: loading would resample {'; '.join(result.lossy)}, so the model would not compute the "
            "checkpoint's function; nothing was loaded. Build the architecture the checkpoint was trained with "
            "(e.g. its patch size in --model_kwargs, or give the checkpoint as --model_name where its format says "
            "its architecture), or pass --allow_resampled_weights to accept resampled weights."
        )
    timm_model.load_state_dict(to_load, strict=False)
    return result


def read_state_dict(
    path: str | os.PathLike, container: str | None = None
) -> tuple[dict[str, torch.Tensor], str | None]:
    """``(tensors, where they were)`` in a checkpoint file (``container``: as in :func:`load_backbone_checkpoint`)."""
    return _find_state_dict(_read_checkpoint(Path(path)), container)


def _read_checkpoint(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointLoadError(f"--pretrained_weights: no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(path, device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointLoadError(
            f"{path} holds pickled Python objects besides tensors (e.g. training args), which we do not unpickle "
            "(weights_only). If you trust the file, load it in a separate session with weights_only=False and "
            "save only its state dict (the dict of tensors), as .pth or, better, .safetensors."
            f"\n{err}"
        ) from err


def _find_state_dict(checkpoint: Any, container: str | None) -> tuple[dict[str, torch.Tensor], str | None]:
    node, parts = checkpoint, []
    if container is not None:
        for part in container.split("."):
            if not isinstance(node, Mapping) or part not in node:
                keys = sorted(node) if isinstance(node, Mapping) else type(node).__name__
                raise CheckpointLoadError(
                    f"no {part!r} in the checkpoint at {'.'.join(parts) or 'the top level'}: {keys}"
                )
            node = node[part]
            parts.append(part)
    else:
        for _ in range(2):
            inner = _container_key(node)
            if inner is None:
                break
            node = node[inner]
            parts.append(inner)
    tensors = {k: v for k, v in node.items() if isinstance(v, torch.Tensor)} if isinstance(node, Mapping) else {}
    if not tensors:
        found = sorted(node) if isinstance(node, Mapping) else type(node).__name__
        raise CheckpointLoadError(
            f"no tensors in the checkpoint at {'.'.join(parts) or 'the top level'} (found {found}); "
            "name the state dict with container=..."
        )
    return tensors, ".".join(parts) or None


def _container_key(node: Any) -> str | None:
    if not isinstance(node, Mapping):
        return None
    return next((key for key in CONTAINER_KEYS if isinstance(node.get(key), Mapping)), None)


def _fit(state_dict: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(keys the model has with the same shape, keys the model has): which version of the keys fits better."""
    named = [key for key in state_dict if key in model_state]
    return sum(state_dict[key].shape == model_state[key].shape for key in named), len(named)


def _strip_prefixes(
    state_dict: dict[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip the chain of :data:`STRIP_PREFIXES` (``module.``, ``model.encoder.``...) that names most model keys.

    Chains are tried whole because a single link may match nothing (``model.`` alone of ``model.encoder.*``).
    Keys without the chain stay as they are and are reported as unexpected if the model lacks them.
    """
    chains: dict[str, list[str]] = {}
    for key in state_dict:
        chain: list[str] = []
        while link := next((p for p in STRIP_PREFIXES if key.startswith("".join(chain) + p)), None):
            chain.append(link)
            chains.setdefault("".join(chain), list(chain))
    best, best_named = state_dict, _fit(state_dict, model_state)[1]
    stripped: list[str] = []
    for prefix in sorted(chains, key=len):  # the shortest chain wins ties
        candidate = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
        candidate.update({k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)})
        named = _fit(candidate, model_state)[1]
        if named > best_named:
            best, best_named, stripped = candidate, named, chains[prefix]
    return best, stripped


def _apply_timm_filter(
    state_dict: dict[str, torch.Tensor],
    timm_model: nn.Module,
    model_state: Mapping[str, torch.Tensor],
    result: CheckpointLoadResult,
) -> dict[str, torch.Tensor]:
    module = sys.modules.get(type(timm_model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state_dict
    name = f"{module.__name__}.checkpoint_filter_fn"
    try:
        filtered = filter_fn(dict(state_dict), timm_model)  # a copy: some filters pop keys
    except Exception as err:  # written for known checkpoint layouts; others may not fit its assumptions
        result.notes.append(f"{name} did not apply ({type(err).__name__}: {err}); keys used as found")
        return state_dict
    if _fit(filtered, model_state)[0] > _fit(state_dict, model_state)[0]:
        result.timm_filter = name
        return filtered
    return state_dict


def _record_shape_changes(
    found: Mapping[str, torch.Tensor], adapted: Mapping[str, torch.Tensor], result: CheckpointLoadResult
) -> None:
    """Every tensor whose shape the filter or the resampling changed, sorted by whether its values survive.

    Interpolating ``pos_embed`` to another grid is the standard way to change the input size; a reshape that keeps
    every value (same count) is exact; anything else (a patch embedding resampled to another patch size) is lossy.
    Tensors compared by name: a filter that renames a key it also resamples would go unseen (timm's do not).
    """
    for key, after in adapted.items():
        before = found.get(key)
        if before is None or before.shape == after.shape:
            continue
        change = f"{key}: {tuple(before.shape)} -> {tuple(after.shape)}"
        if key == "pos_embed" and before.ndim == after.ndim == 3 and before.shape[-1] == after.shape[-1]:
            result.resampled.append(change)
        elif before.numel() == after.numel():
            result.reshaped.append(change)
        else:
            result.lossy.append(change + (f" ({result.timm_filter})" if result.timm_filter else ""))


def _resample_pos_embed(state_dict: dict[str, torch.Tensor], timm_model: nn.Module) -> dict[str, torch.Tensor]:
    """An absolute ``pos_embed`` of another (square) grid, resampled to the model's, class/register tokens kept."""
    target = getattr(timm_model, "pos_embed", None)
    source = state_dict.get("pos_embed")
    if not isinstance(target, torch.Tensor) or source is None or source.ndim != 3 or source.shape == target.shape:
        return state_dict
    # timm's convention (vision_transformer.checkpoint_filter_fn): prefix tokens have no position unless
    # no_embed_class is off
    num_prefix = 0 if getattr(timm_model, "no_embed_class", False) else getattr(timm_model, "num_prefix_tokens", 1)
    side = math.isqrt(source.shape[1] - num_prefix)
    grid = getattr(getattr(timm_model, "patch_embed", None), "grid_size", None)
    if grid is None or side * side != source.shape[1] - num_prefix or source.shape[2] != target.shape[2]:
        return state_dict  # not a square grid with our prefix tokens and width: reported as a mismatch
    resampled = resample_abs_pos_embed(source, new_size=list(grid), old_size=[side, side], num_prefix_tokens=num_prefix)
    return {**state_dict, "pos_embed": resampled}


def _head_keys(timm_model: nn.Module, model_state: Mapping[str, torch.Tensor]) -> set[str]:
    """State-dict keys of the classifier(s), named by timm's ``pretrained_cfg["classifier"]``."""
    classifiers = (getattr(timm_model, "pretrained_cfg", None) or {}).get("classifier")
    if not classifiers:
        head = timm_model.get_classifier() if hasattr(timm_model, "get_classifier") else None
        classifiers = [name for name, module in timm_model.named_modules() if head is not None and module is head]
    if isinstance(classifiers, str):
        classifiers = [classifiers]
    return {key for key in model_state if any(key.startswith(name + ".") for name in classifiers)}


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f", ... ({len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else "")
