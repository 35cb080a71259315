"""A compact uint8 image cache: decode the prepared PNGs once, then read batches from a memory map.

Training at thousands of images/s cannot afford a PNG decode (milliseconds) per image per epoch, so each split
is decoded once into a folder holding

    images.npy   N x S x S grayscale uint8: :func:`cxr_vit.data.transforms.resize_for_model` of each image
                 (S = 248 for ViT-B/16 at 224: 60 KB an image, 345 MB for 5,606)
    labels.npy   N x 15 float32 multi-hot labels
    meta.json    what the cache was built from; any difference rebuilds it

Readers open the arrays with ``mmap_mode="r"``: pages live once in the OS page cache and are shared by all
DataLoader workers, so no worker holds its own copy of the dataset.

The key in meta.json covers everything that decides the cached pixels: the dataset (its fingerprint and digests of
its ids and labels), the eval resize side, the interpolation and the crop, and the preprocessing's version. A cache
is derived data, so a stale one is rebuilt (saying why), never read.

A cache is built in a staging folder beside it and renamed into place only when complete, so a build killed
half-way leaves no partial cache to read (its staging folder is removed by the next build). :func:`ensure_cache`
holds a file lock per cache (:mod:`cxr_vit.data.locking`): processes that start together, such as the ranks of
a node, build it once and the others wait, then reuse it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .locking import exclusive
from .transforms import EvalGeometry, resize_for_model

logger = logging.getLogger(__name__)

# Bumped whenever the preprocessing or the file layout changes, so older caches are rebuilt.
CACHE_FORMAT_VERSION = 2
IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"
META_FILE = "meta.json"
CACHE_ROOT_ENV = "CXR_VIT_CACHE"
STAGING_SUFFIX = ".tmp-"  # <cache>.tmp-<pid>: a build in progress, or one that was killed


def default_cache_dir(
    dataset_name: str, split: str, geometry: EvalGeometry, root: str | os.PathLike | None = None
) -> Path:
    """``<prepared folder>/cache/<split>-<S>px-<interpolation>`` for a local folder; for a Hub dataset id, under
    ``$CXR_VIT_CACHE/<id>`` (default ``$HF_HOME/cxr_vit/<id>``, beside the Hub's own caches).

    Inside the prepared folder the cache is git-ignored with it and never uploaded (``push_dataset`` sends
    README.md and the Parquet shards only).
    """
    if root is None:
        if Path(dataset_name).is_dir():
            root = Path(dataset_name) / "cache"
        else:
            from huggingface_hub import constants

            base = Path(os.environ.get(CACHE_ROOT_ENV) or Path(constants.HF_HOME) / "cxr_vit").expanduser()
            root = base / dataset_name.replace("/", "--")
    return Path(root) / f"{split}-{geometry.resize_size}px-{geometry.interpolation}"


def read_meta(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_cache(
    directory: str | os.PathLike,
    read_images: Callable[[int, int], Sequence[Image.Image | bytes]],
    labels: np.ndarray,
    geometry: EvalGeometry,
    key: dict[str, Any] | None = None,
    num_threads: int | None = None,
    chunk_size: int = 64,
) -> Path:
    """Decode every image once into ``directory`` (replaced atomically, so readers never see half a cache).

    Args:
        read_images: ``read_images(start, stop)`` -> images ``start..stop-1`` as PIL images or encoded bytes;
            called from this thread only, while decoding and resizing run in ``num_threads`` threads (PIL
            releases the GIL for both).
        labels: (N, 15) multi-hot matrix; N is the number of images.
        key: what the cache is built from, stored in meta.json and compared by :func:`ensure_cache`.
    """
    directory = Path(directory)
    labels = np.asarray(labels, dtype=np.float32)
    staging = directory.with_name(f"{directory.name}{STAGING_SUFFIX}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _decode_all(staging / IMAGES_FILE, read_images, len(labels), geometry, num_threads, chunk_size)
    np.save(staging / LABELS_FILE, labels)
    meta = {"format_version": CACHE_FORMAT_VERSION, "num_rows": len(labels), **geometry.key(), **(key or {})}
    (staging / META_FILE).write_text(json.dumps(meta, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(staging, directory)
    return directory


def _decode_all(
    path: Path,
    read_images: Callable[[int, int], Sequence[Image.Image | bytes]],
    count: int,
    geometry: EvalGeometry,
    num_threads: int | None,
    chunk_size: int,
) -> None:
    side = geometry.resize_size
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, side, side))

    def decode_into(start: int, chunk: Sequence[Image.Image | bytes]) -> None:
        for offset, item in enumerate(chunk):
            image = Image.open(io.BytesIO(item)) if isinstance(item, bytes) else item
            array[start + offset] = resize_for_model(image, geometry)

    threads = num_threads or min(8, os.cpu_count() or 1)
    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, count, chunk_size):
            pending.append(pool.submit(decode_into, start, read_images(start, min(start + chunk_size, count))))
            if len(pending) >= 2 * threads:  # bound the encoded bytes held in memory
                pending.pop(0).result()
        for future in pending:
            future.result()
    array.flush()


def dataset_key(dataset, geometry: EvalGeometry) -> dict[str, Any]:
    """What identifies a ``datasets.Dataset``'s cache: the geometry, its fingerprint and Arrow files, digests of
    ids and labels.

    The fingerprint follows every ``select`` but not the data: datasets derives it from the folder's name and
    README, the same for two folders of one name. The Arrow files of a folder read by
    :func:`cxr_vit.data.local.load_dataset_as_is` lie in a cache keyed by its content, so their paths follow the
    pixels. The digests (two small columns) also catch a dataset built in memory, which has no files.
    """
    ids = dataset["image_id"] if "image_id" in dataset.column_names else [str(i) for i in range(len(dataset))]
    labels = np.asarray(dataset["labels"], dtype=np.float32)
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "num_rows": len(dataset),
        **geometry.key(),
        "fingerprint": getattr(dataset, "_fingerprint", None),
        "arrow_files": sorted(entry["filename"] for entry in getattr(dataset, "cache_files", [])),
        "ids_sha1": hashlib.sha1("\n".join(ids).encode()).hexdigest(),
        "labels_sha1": hashlib.sha1(labels.tobytes()).hexdigest(),
    }


def ensure_cache(
    dataset,
    directory: str | os.PathLike,
    geometry: EvalGeometry,
    num_threads: int | None = None,
) -> Path:
    """The cache of ``dataset`` (a ``datasets.Dataset`` with ``image`` and ``labels``) in ``directory``.

    Reused when its meta.json matches the dataset, built (or rebuilt when stale) otherwise, under the cache's
    lock: a process that finds another building it waits, then reuses it.
    """
    directory = Path(directory)
    with exclusive(directory.with_name(f"{directory.name}.lock"), f"building the image cache {directory}"):
        for staging in directory.parent.glob(f"{directory.name}{STAGING_SUFFIX}*"):
            logger.warning("removing %s: an image cache build that was interrupted", staging)
            shutil.rmtree(staging, ignore_errors=True)
        return _ensure_cache(dataset, directory, geometry, num_threads)


def _ensure_cache(dataset, directory: Path, geometry: EvalGeometry, num_threads: int | None) -> Path:
    import datasets  # only here: the cache readers and the benchmark's GPU side do not need `datasets`

    key = dataset_key(dataset, geometry)
    meta = read_meta(directory)
    if meta == key and (directory / IMAGES_FILE).is_file():
        logger.info("using the image cache %s", directory)
        return directory
    if meta is not None:
        changed = sorted(name for name in set(key) | set(meta) if key.get(name) != meta.get(name))
        logger.warning("rebuilding the image cache %s: it was built from other data or settings (%s)", directory,
                       ", ".join(changed))  # fmt: skip
    logger.info("building the image cache %s (%d images at %d px)", directory, len(dataset), geometry.resize_size)
    raw = dataset.cast_column("image", datasets.Image(decode=False))

    def read_images(start: int, stop: int) -> list[bytes]:
        return [cell["bytes"] or Path(cell["path"]).read_bytes() for cell in raw[start:stop]["image"]]

    return write_cache(directory, read_images, np.asarray(dataset["labels"]), geometry, key, num_threads)
