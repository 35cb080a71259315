"""Runs over several processes or machines: a launch check, and FSDP sharding of the timm blocks.

- :func:`check_process_count`: a launcher asked for N processes must give a run of N. ``accelerate launch --cpu
  --num_processes 2`` (or ``--num_machines 2`` without ``--multi_gpu``) starts one plain process and no process
  group, so each machine would train alone, unaware of the others; we stop it and name the launch that works.
- :func:`fsdp_block_classes` / :func:`configure_fsdp`: ``--fsdp`` wraps each transformer block of the timm backbone
  in its own FSDP unit (the blocks are what a ViT-L/H is made of), unless ``fsdp_config`` names the classes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import torch

logger = logging.getLogger(__name__)

BLOCK_NAME = re.compile(r"(^|\.)blocks\.\d+$")  # ViT/DeiT/EVA: blocks.N; Swin/ConvNeXt: layers.i.blocks.N
MULTI_PROCESS_LAUNCHES = (
    "torchrun --nnodes M --nproc_per_node N scripts/train.py ... (CPU or GPU), or "
    "accelerate launch --multi_gpu --num_processes N [--num_machines M ...] scripts/train.py ..."
)


class LaunchError(RuntimeError):
    """The launcher started fewer processes than it was asked for; the message says how to launch instead."""


def check_process_count(world_size: int, environ: Mapping[str, str] = os.environ) -> None:
    """Raise :class:`LaunchError` when this run has fewer processes than its launcher was asked for.

    Args:
        world_size: the processes that joined this run (``TrainingArguments.world_size``).
        environ: the launcher's environment. torchrun sets ``WORLD_SIZE``; ``accelerate launch`` sets
            ``ACCELERATE_USE_CPU`` always and ``MASTER_ADDR`` only when asked for more than one process or
            machine, so the pair without ``WORLD_SIZE`` means its one-process launcher ran a multi-process request.
    """
    if "WORLD_SIZE" in environ:
        launched = int(environ["WORLD_SIZE"])
        if launched != world_size:
            raise LaunchError(
                f"the launcher started {launched} processes (WORLD_SIZE), but this run has {world_size}: "
                f"they would train separately. Launch with {MULTI_PROCESS_LAUNCHES}"
            )
        return
    if "ACCELERATE_USE_CPU" in environ and "MASTER_ADDR" in environ and world_size == 1:
        raise LaunchError(
            "accelerate launch was asked for several processes or machines but started one process with no "
            "process group (its --cpu / single-process launcher does that without --multi_gpu): every machine "
            f"would train alone. Launch with {MULTI_PROCESS_LAUNCHES}. (For one process on purpose: MASTER_ADDR came "
            "from your environment; unset it.)"
        )


def fsdp_block_classes(model: torch.nn.Module) -> list[str]:
    """Class names of the backbone's transformer blocks (``blocks.N`` modules), the FSDP wrapping units."""
    names = sorted({type(module).__name__ for name, module in model.named_modules() if BLOCK_NAME.search(name)})
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no blocks.N modules to shard; name the classes to wrap in --fsdp_config "
            '(e.g. {"transformer_layer_cls_to_wrap": ["Block"]})'
        )
    return names


def configure_fsdp(training_args, model: torch.nn.Module) -> None:
    """With ``--fsdp``, wrap ``model``'s timm blocks unless ``fsdp_config`` names other classes; else nothing."""
    plugin_args = getattr(training_args, "fsdp_plugin_args", None)
    if not training_args.fsdp or plugin_args is None:
        return
    if plugin_args.get("auto_wrap_policy") == "TRANSFORMER_BASED_WRAP" and not plugin_args.get(
        "transformer_cls_names_to_wrap"
    ):
        plugin_args["transformer_cls_names_to_wrap"] = ",".join(fsdp_block_classes(model))
    logger.info(
        "FSDP%s: wrapping %s, checkpoints %s",
        plugin_args.get("fsdp_version"),
        plugin_args.get("transformer_cls_names_to_wrap") or plugin_args.get("auto_wrap_policy"),
        plugin_args.get("state_dict_type"),
    )
