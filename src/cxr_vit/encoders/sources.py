"""Where an encoder's weights come from: a file, a folder, or a Hub repo (downloaded with ``huggingface_hub``,
read from its cache when offline), with the config file published beside them, if any."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

# Weights files published by the encoders' repos, in the order we take them.
WEIGHTS_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
    "model.pth",
    "model.pt",
)
# Config files published beside the weights: the architecture (transformers / timm: config.json; open_clip:
# open_clip_config.json, with its preprocess_cfg) and transformers' image processor (image_mean / image_std).
CONFIG_FILE = "config.json"
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
CONFIG_FILES = (CONFIG_FILE, OPEN_CLIP_CONFIG_FILE, PREPROCESSOR_FILE)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class EncoderNotFoundError(FileNotFoundError):
    """No checkpoint where the user pointed: no such file or folder, or no weights file in the folder / Hub repo."""


@dataclass
class EncoderSource:
    """A checkpoint file and the config files published beside it, by file name (none for a lone file).

    Each is kept: open_clip's Hub repos ship a ``config.json`` beside ``open_clip_config.json``, and each format
    reads its own (:attr:`cxr_vit.encoders.CheckpointFormat.config_file`).
    """

    origin: str  # what the user gave: a path or a Hub repo id
    weights: Path
    configs: dict[str, dict] = field(default_factory=dict)

    def normalization(self) -> tuple[list[float], list[float]] | None:
        """``(mean, std)`` the encoder was trained with, where its files say (transformers or open_clip)."""
        processor = self.configs.get(PREPROCESSOR_FILE) or {}
        if "image_mean" in processor and "image_std" in processor:
            return list(processor["image_mean"]), list(processor["image_std"])
        preprocess = (self.configs.get(OPEN_CLIP_CONFIG_FILE) or {}).get("preprocess_cfg") or {}
        if "mean" in preprocess and "std" in preprocess:
            return list(preprocess["mean"]), list(preprocess["std"])
        return None


def is_hub_id(source: str) -> bool:
    return not Path(source).exists() and HUB_ID.fullmatch(source) is not None


def resolve_source(source: str) -> EncoderSource:
    """A file as it is; a folder's or Hub repo's first :data:`WEIGHTS_FILES` file and its :data:`CONFIG_FILES`."""
    path = Path(source)
    if path.is_file():
        return EncoderSource(source, path)
    if path.is_dir():
        weights = next((path / name for name in WEIGHTS_FILES if (path / name).is_file()), None)
        if weights is None:
            raise EncoderNotFoundError(f"{source}: none of {', '.join(WEIGHTS_FILES)} in this folder")
        return EncoderSource(source, weights, _read_configs({name: path / name for name in CONFIG_FILES}))
    if not is_hub_id(source):
        raise EncoderNotFoundError(f"{source}: no such file or folder, and not a Hub repo id (org/name)")
    weights = _download_first(source, WEIGHTS_FILES)
    if weights is None:
        raise EncoderNotFoundError(
            f"Hub repo {source}: none of {', '.join(WEIGHTS_FILES)} there (or, offline, in the cache); download the "
            "checkpoint and give its path instead"
        )
    configs = {name: found for name in CONFIG_FILES if (found := _download_first(source, (name,))) is not None}
    return EncoderSource(source, weights, _read_configs(configs))


def _download_first(repo_id: str, names: tuple[str, ...]) -> Path | None:
    for name in names:
        try:
            return Path(hf_hub_download(repo_id, name))
        except EntryNotFoundError:  # not in the repo, or offline and not in the cache
            continue
    return None


def _read_configs(paths: dict[str, Path]) -> dict[str, dict]:
    return {name: json.loads(path.read_text()) for name, path in paths.items() if path.is_file()}


def hub_config(source: str) -> dict | None:
    """The ``config.json`` of a folder or Hub repo, ``None`` where it has none."""
    path = Path(source)
    if path.is_dir():
        found: Path | None = path / CONFIG_FILE
    else:
        found = _download_first(source, (CONFIG_FILE,)) if is_hub_id(source) else None
    return _read_configs({CONFIG_FILE: found}).get(CONFIG_FILE) if found else None
