"""Find a checkpoint that is safe to resume from.

A run killed while writing a checkpoint leaves a folder that looks like a checkpoint but is not one. The
Trainer writes ``trainer_state.json`` last, so a checkpoint counts as complete only when that file parses
and the weights, optimizer, scheduler and RNG files it wrote before are there and readable. An FSDP checkpoint
(``--fsdp``) holds its weights and optimizer as sharded folders (accelerate's ``pytorch_model_fsdp_0/`` and
``optimizer_0/``), each complete once ``torch.distributed.checkpoint`` has written its ``.metadata``, last.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from safetensors import safe_open

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """An explicitly named checkpoint cannot be resumed from; the message says why."""


CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
REQUIRED_FILES = ("model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "trainer_state.json")
SHARDED_FOLDERS = ("pytorch_model_fsdp_0", "optimizer_0")  # accelerate's FSDP SHARDED_STATE_DICT layout
SHARDED_REQUIRED_FILES = ("scheduler.pt", "trainer_state.json")
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint writes it after every shard


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be resumed from, or None if it is a complete checkpoint."""
    path = Path(path)
    if not path.is_dir():
        return "not a folder"
    sharded = (path / SHARDED_FOLDERS[0]).is_dir()
    required = SHARDED_REQUIRED_FILES + tuple(f"{folder}/{DCP_METADATA}" for folder in SHARDED_FOLDERS)
    for name in required if sharded else REQUIRED_FILES:
        if name == "optimizer.pt" and (path / "optimizer.bin").is_file():  # FSDP with a full state dict: .bin
            name = "optimizer.bin"
        if not (path / name).is_file() or (path / name).stat().st_size == 0:
            return f"{name} is missing or empty"
    if not list(path.glob("rng_state*.pth")):
        return "no rng_state*.pth (needed for a bit-exact resume)"
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"trainer_state.json is unreadable ({err})"
    if "global_step" not in state:
        return "trainer_state.json has no global_step"
    if sharded:
        return None
    try:
        with safe_open(str(path / "model.safetensors"), framework="pt") as weights:
            if not list(weights.keys()):
                return "model.safetensors holds no tensors"
    except Exception as err:  # safetensors raises its own error types for truncated files
        return f"model.safetensors is unreadable ({err})"
    return None


def find_resumable_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete checkpoint in ``output_dir``; incomplete ones are skipped with a warning."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = [p for p in output_dir.iterdir() if CHECKPOINT_PATTERN.match(p.name) and p.is_dir()]
    for path in sorted(candidates, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)), reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("skipping incomplete checkpoint %s: %s (left by an interrupted save?)", path, problem)
    return None


def resolve_resume_checkpoint(value: str | None, output_dir: str | os.PathLike) -> str | None:
    """``--resume_from_checkpoint``: None/"" -> start fresh; ``auto`` -> newest complete one (or fresh);
    a path -> that checkpoint, which must be complete."""
    if not value or value.lower() in ("false", "none", "no"):
        return None
    if value.lower() in ("auto", "true", "last"):
        found = find_resumable_checkpoint(output_dir)
        logger.info("resume: %s", found or f"no complete checkpoint in {output_dir}, starting from scratch")
        return found
    problem = checkpoint_problem(value)
    if problem:
        raise CheckpointError(
            f"cannot resume from {value}: {problem}. Use --resume_from_checkpoint auto to pick the "
            "newest complete checkpoint."
        )
    return value
