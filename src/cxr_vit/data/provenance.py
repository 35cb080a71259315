"""What a prepared dataset folder was made from, so that a changed input is never trained on silently.

``prepare.json`` in the folder records the preparation's parameters (config, image size, split fractions, split
seed, bad-image policy) and a fingerprint of its inputs: the SHA-256 of the label CSV and of the official split
lists, and a digest of the image files used (each listed file's name and size in bytes; for images read from the
release's archives, each archive's name and size). A folder is reused only
when all of it matches what would be prepared now.

Paths are recorded for information but not compared: moving or copying the same files is not a change. Image
contents are fingerprinted by name and size, not hashed: hashing 42 GB of PNGs at every start would cost minutes.
An image rewritten in place at the very same byte size goes unnoticed; re-prepare after such an edit.

The record is written last and atomically: it is what makes a folder complete. Until then the folder carries
:data:`PREPARING_MARKER`, and a folder still marked was interrupted (or is being written) and is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from .archives import archives_fingerprint, find_archives
from .nih import index_images, read_labels_csv

PREPARE_RECORD = "prepare.json"
# In a folder while it is being prepared, removed once its record is written: a marked folder is never read.
PREPARING_MARKER = ".cxr_vit_preparing.json"
RECORD_VERSION = 1
# The settings that change a prepared folder's content (num_proc does not).
RECORDED_PARAMETERS = ("config", "image_size", "split_seed", "validation_fraction", "test_fraction", "on_bad_image")
# ... and, for the other releases (absent, so None, in an NIH record): which release and how its labels were read.
SOURCE_PARAMETERS = ("source", "uncertain", "readers", "approximate_labels", "views")
INPUT_FILES = ("labels_csv", "train_val_list", "test_list", "metadata_csv", "split_csv")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def images_fingerprint(images_dir: str | os.PathLike, names: list[str]) -> dict[str, Any]:
    """Count and digest (name and byte size of each file) of the listed images that exist under ``images_dir``.

    For images read from archives: the archives' names and sizes (:func:`archives_fingerprint`); listing their
    members would mean decompressing 45 GB at every start.
    """
    archives = find_archives(images_dir)
    if archives:
        return archives_fingerprint(archives)
    index = index_images(images_dir)
    return files_fingerprint({name: index[name] for name in names if name in index})


def files_fingerprint(paths: dict[str, str | os.PathLike]) -> dict[str, Any]:
    """Count and digest of image files given as ``{image id: path}`` (each id with its file's byte size)."""
    lines = [f"{name}\t{os.stat(paths[name]).st_size}" for name in sorted(paths)]
    return {"count": len(lines), "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest()}


def _file_entry(path: str | os.PathLike | None) -> dict[str, str] | None:
    return None if path is None else {"path": str(path), "sha256": file_sha256(path)}


def prepare_record(
    images_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    parameters: dict[str, Any],
    train_val_list: str | os.PathLike | None = None,
    test_list: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The record of a preparation from these inputs with these parameters (see the module docstring)."""
    names = read_labels_csv(labels_csv)["image_id"].tolist()
    return {
        "version": RECORD_VERSION,
        "parameters": {name: parameters.get(name) for name in RECORDED_PARAMETERS},
        "inputs": {
            "labels_csv": _file_entry(labels_csv),
            "train_val_list": _file_entry(train_val_list),
            "test_list": _file_entry(test_list),
            "images": {"path": str(images_dir), **images_fingerprint(images_dir, names)},
        },
    }


def source_record(
    images: dict[str, str | os.PathLike], inputs: dict[str, str | os.PathLike | None], parameters: dict[str, Any]
) -> dict[str, Any]:
    """The record of a preparation of another release: ``images`` maps each image id to its file, ``inputs`` names
    the label files (``labels_csv``, ``metadata_csv``, ``split_csv``) and ``parameters`` holds every setting."""
    recorded = (*RECORDED_PARAMETERS, *SOURCE_PARAMETERS)
    entries = {name: _file_entry(inputs.get(name)) for name in INPUT_FILES}
    images_dir = parameters.get("images_dir")
    return {
        "version": RECORD_VERSION,
        "parameters": {name: parameters.get(name) for name in recorded},
        "inputs": {**entries, "images": {"path": str(images_dir), **files_fingerprint(images)}},
    }


def mark_preparing(folder: str | os.PathLike) -> Path:
    """Mark ``folder`` as being prepared (by whom, since when) until :func:`write_record` completes it."""
    started = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    path = Path(folder) / PREPARING_MARKER
    path.write_text(json.dumps(started) + "\n")
    return path


def interrupted_preparation(folder: str | os.PathLike) -> dict | None:
    """Who started the unfinished preparation of ``folder`` (interrupted, or still running), else None."""
    marker = Path(folder) / PREPARING_MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # killed while writing the marker itself


def read_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(folder) / PREPARE_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(folder: str | os.PathLike, record: dict[str, Any]) -> Path:
    return write_json_atomic(Path(folder) / PREPARE_RECORD, record)  # it marks a complete folder: never half


def _short(entry: dict | None) -> str:
    return "none" if entry is None else f"{Path(entry['path']).name} sha256 {entry['sha256'][:12]}"


def record_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two records, one short phrase each (empty: the same preparation)."""
    if recorded.get("version") != current.get("version"):
        return [f"record version {recorded.get('version')} -> {current.get('version')}"]
    differences = []
    for name in (*RECORDED_PARAMETERS, *SOURCE_PARAMETERS):
        before, after = recorded["parameters"].get(name), current["parameters"].get(name)
        if before != after:
            differences.append(f"{name} {before} -> {after}")
    for name in INPUT_FILES:
        before, after = recorded["inputs"].get(name), current["inputs"].get(name)
        if (before or {}).get("sha256") != (after or {}).get("sha256"):
            differences.append(f"{name} content ({_short(before)} -> {_short(after)})")
    before, after = recorded["inputs"]["images"], current["inputs"]["images"]
    if (before["count"], before["sha256"]) != (after["count"], after["sha256"]):
        differences.append(
            f"image files ({before['count']} -> {after['count']} files, names/sizes digest "
            f"{before['sha256'][:12]} -> {after['sha256'][:12]})"
        )
    return differences


def record_push(folder: str | os.PathLike, repo_id: str) -> Path:
    """Note in ``prepare.json`` the Hub repo the folder was pushed to, so that model cards can name the data by it.

    Preparing the folder again writes a new record without it: the repo then holds other data.
    """
    record = read_record(folder)
    if record is None:
        raise FileNotFoundError(f"{Path(folder) / PREPARE_RECORD} is missing: prepare the folder with cxr-vit first")
    return write_record(folder, {**record, "hub": {"repo_id": repo_id}})


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record as published with the data: input files named by file name, not by their local paths."""
    inputs = {
        name: None if entry is None else {**entry, "path": Path(entry["path"]).name}
        for name, entry in record["inputs"].items()
    }
    return {key: value for key, value in record.items() if key != "hub"} | {"inputs": inputs}
