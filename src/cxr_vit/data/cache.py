"""A compact uint8 image cache: decode the prepared PNGs once, then read batches from a memory map.

Training at thousands of images/s cannot afford a PNG decode per image per epoch (about 2.3 ms for a 256 px
PNG, so ~430 images/s per core), so each split is decoded once into a folder holding

    images.npy   N x S x S grayscale uint8 (S = 248 for ViT-B/16 at 224: 60 KB an image, 345 MB for 5,606)
    labels.npy   N x 15 float32 multi-hot labels
    meta.json    what the cache was built from (dataset fingerprint, ids digest, S); a mismatch rebuilds it

Readers open the arrays with ``mmap_mode="r"``: pages live once in the OS page cache and are shared by all
DataLoader workers, so no worker holds its own copy of the dataset.

S is timm's eval resize size, ``floor(input_size / crop_pct)``, and images are resized to it with PIL
bicubic exactly as timm's eval transform resizes, so the device-side eval path is a plain center crop that
reproduces timm's eval inputs (see :mod:`cxr_vit.data.gpu_augment`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .images import to_grayscale_uint8

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"
META_FILE = "meta.json"
DEFAULT_CROP_PCT = 0.875  # timm's default when a pretrained_cfg has none
CACHE_ROOT_ENV = "CXR_VIT_CACHE"


def cache_image_size(data_config: dict[str, Any]) -> int:
    """Side of the cached images: the size timm's eval transform resizes to before its center crop."""
    height, width = data_config["input_size"][-2:]
    if height != width:
        raise ValueError(f"the image cache needs a square model input, got {height}x{width}: --input_pipeline datasets")
    crop_mode = data_config.get("crop_mode") or "center"
    if crop_mode != "center":
        raise ValueError(
            f"the image cache reproduces timm's 'center' eval crop, not {crop_mode!r}: use --input_pipeline datasets"
        )
    return math.floor(height / (data_config.get("crop_pct") or DEFAULT_CROP_PCT))


def default_cache_dir(dataset_name: str, split: str, image_size: int, root: str | os.PathLike | None = None) -> Path:
    """``<prepared folder>/cache/<split>-<S>px`` for a local folder; for a Hub dataset id, the same under
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
    return Path(root) / f"{split}-{image_size}px"


def square_uint8(image: Image.Image, size: int) -> np.ndarray:
    """Grayscale, center square crop, PIL bicubic resize to ``size`` x ``size`` (timm's eval resize)."""
    gray = to_grayscale_uint8(image)
    width, height = gray.size
    if width != height:
        side = min(width, height)
        left, top = int(round((width - side) / 2.0)), int(round((height - side) / 2.0))
        gray = gray.crop((left, top, left + side, top + side))
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(gray, dtype=np.uint8)


def read_meta(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_cache(
    directory: str | os.PathLike,
    read_images: Callable[[int, int], Sequence[Image.Image | bytes]],
    labels: np.ndarray,
    image_size: int,
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
    staging = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _decode_all(staging / IMAGES_FILE, read_images, len(labels), image_size, num_threads, chunk_size)
    np.save(staging / LABELS_FILE, labels)
    meta = {"format_version": CACHE_FORMAT_VERSION, "num_rows": len(labels), "image_size": image_size, **(key or {})}
    (staging / META_FILE).write_text(json.dumps(meta, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(staging, directory)
    return directory


def _decode_all(
    path: Path,
    read_images: Callable[[int, int], Sequence[Image.Image | bytes]],
    count: int,
    image_size: int,
    num_threads: int | None,
    chunk_size: int,
) -> None:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, image_size, image_size))

    def decode_into(start: int, chunk: Sequence[Image.Image | bytes]) -> None:
        for offset, item in enumerate(chunk):
            image = Image.open(io.BytesIO(item)) if isinstance(item, bytes) else item
            array[start + offset] = square_uint8(image, image_size)

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


def dataset_key(dataset, image_size: int) -> dict[str, Any]:
    """What identifies a ``datasets.Dataset``'s cache: its fingerprint plus digests of ids and labels.

    The fingerprint follows the prepared Parquet files and every ``select``; the digests (two small columns)
    also catch a dataset whose fingerprint is random or reused, e.g. one built in memory.
    """
    ids = dataset["image_id"] if "image_id" in dataset.column_names else [str(i) for i in range(len(dataset))]
    labels = np.asarray(dataset["labels"], dtype=np.float32)
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "num_rows": len(dataset),
        "image_size": image_size,
        "fingerprint": getattr(dataset, "_fingerprint", None),
        "ids_sha1": hashlib.sha1("\n".join(ids).encode()).hexdigest(),
        "labels_sha1": hashlib.sha1(labels.tobytes()).hexdigest(),
    }


def ensure_cache(
    dataset,
    directory: str | os.PathLike,
    image_size: int,
    num_threads: int | None = None,
) -> Path:
    """The cache of ``dataset`` (a ``datasets.Dataset`` with ``image`` and ``labels``) in ``directory``.

    Reused when its meta.json matches the dataset, built (or rebuilt when stale) otherwise. Run it on the
    main process first in distributed training (``TrainingArguments.main_process_first``).
    """
    import datasets  # only here: the cache readers and the benchmark's GPU side do not need `datasets`

    key = dataset_key(dataset, image_size)
    directory = Path(directory)
    if read_meta(directory) == key and (directory / IMAGES_FILE).is_file():
        logger.info("using the image cache %s", directory)
        return directory
    logger.info("building the image cache %s (%d images at %d px)", directory, len(dataset), image_size)
    raw = dataset.cast_column("image", datasets.Image(decode=False))

    def read_images(start: int, stop: int) -> list[bytes]:
        return [cell["bytes"] or Path(cell["path"]).read_bytes() for cell in raw[start:stop]["image"]]

    return write_cache(directory, read_images, np.asarray(dataset["labels"]), image_size, key, num_threads)
