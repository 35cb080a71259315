"""Read a local dataset folder as it is now, never as an earlier folder of the same name was.

``datasets.load_dataset(<folder>)`` (datasets 5.x) converts the files to Arrow once, in its cache, and reuses that
copy on later calls. For a folder whose ``README.md`` lists its data files under ``configs:`` (what cxr-vit and
``push_to_hub`` write), the copy is keyed by the folder's *name* and the README's YAML only (features, split
counts and byte totals): not its path, the files' times or their contents. Without ``configs:`` the key covers
the files' paths and modification times. So a folder prepared again in place with the same counts (a corrected
label list, a newer preparation that orders rows otherwise), a prepared folder copied or synced over another, or
another folder of the same name (a temporary path that repeats, ``data/prepared`` in two checkouts) is served the
rows first converted.

:func:`load_dataset_as_is` gives ``load_dataset`` a cache folder of its own per content instead
(``<HF_DATASETS_CACHE>/cxr_vit_local/<key>``), keyed by:

- for a folder with ``prepare.json``: the SHA-256 of its Parquet shards and of its README, checked against the
  shard digests the preparation recorded (a shard that is not the one prepared is an error naming it);
- for any other local folder: every file's relative path, size and modification time in nanoseconds (hashing
  an image folder of 45 GB at each start would cost minutes).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import datasets

from .nih import NIHDataError
from .provenance import PREPARE_RECORD, file_sha256, read_record

CACHE_SUBDIR = "cxr_vit_local"
SHARD_PATTERN = "data/*.parquet"
# Not data: the package's image caches, version control, locks and preparation markers.
NOT_DATA = {"cache", ".git", ".cache", ".huggingface"}


def shard_digests(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{"data/train-00000-of-00001.parquet": {"size": ..., "sha256": ...}, ...}`` of a prepared folder."""
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(folder.glob(SHARD_PATTERN))
    }


def _prepared_key(folder: Path, record: dict) -> str:
    on_disk = shard_digests(folder)
    recorded = record.get("data_files")
    if recorded is not None and recorded != on_disk:
        name = next(name for name in sorted(set(recorded) | set(on_disk)) if recorded.get(name) != on_disk.get(name))
        before, after = recorded.get(name), on_disk.get(name)
        describe = lambda entry: "missing" if entry is None else f"{entry['size']} bytes, sha256 {entry['sha256'][:12]}"  # noqa: E731
        raise NIHDataError(
            f"{folder / name} is not the file {folder / PREPARE_RECORD} describes (recorded: {describe(before)}; "
            f"on disk: {describe(after)}): the folder changed after its preparation. Prepare it again "
            "(scripts/prepare_data.py --overwrite_prepared) or restore the folder as a whole."
        )
    readme = folder / "README.md"
    content = {"shards": on_disk, "readme": file_sha256(readme) if readme.is_file() else None}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _files_key(folder: Path) -> str:
    lines = []
    for root, directories, files in os.walk(folder):
        directories[:] = sorted(name for name in directories if name not in NOT_DATA)
        for name in sorted(files):
            if name.endswith(".lock") or name.startswith(".cxr_vit_"):
                continue
            stat = (Path(root) / name).stat()
            lines.append(f"{(Path(root) / name).relative_to(folder).as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def content_key(folder: str | os.PathLike) -> str:
    """What identifies the rows of a local dataset folder (module docstring); changes whenever they may."""
    folder = Path(folder).resolve()
    record = read_record(folder)
    key = _prepared_key(folder, record) if record is not None else _files_key(folder)
    return hashlib.sha256(f"{folder.name}\n{key}".encode()).hexdigest()[:24]


def load_dataset_as_is(
    name: str, config: str | None = None, cache_root: str | os.PathLike | None = None, **kwargs
) -> datasets.DatasetDict:
    """``datasets.load_dataset(name, config, **kwargs)``; for a local folder, from a cache keyed by its content,
    ``<cache_root>/cxr_vit_local/<key>`` (default root: ``HF_DATASETS_CACHE``).

    A Hub id is cached by its commit, so it goes to ``load_dataset`` unchanged.
    """
    if not Path(name).is_dir():
        return datasets.load_dataset(name, config, **kwargs)
    root = Path(cache_root if cache_root is not None else datasets.config.HF_DATASETS_CACHE)
    return datasets.load_dataset(name, config, cache_dir=str(root / CACHE_SUBDIR / content_key(name)), **kwargs)
