"""Per-core CPU input pipelines: the notebook recipe's per-image path, ours (cache read + batch augmentation),
and the ``datasets`` path, measured in interleaved rounds so another process cannot deflate one side only."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.cached_dataset import CachedImageDataset
from ..data.gpu_augment import BatchImageTransform
from ..data.intensity import IntensityAugment
from ..data.transforms import ModelImages, collate_images, eval_geometry
from . import notebook_recipe
from .load import Interval, LoadMeter


@contextmanager
def one_thread() -> Iterator[None]:
    """Per-core numbers: torch and OpenCV on one thread (PIL and NumPy decoding are single-threaded)."""
    threads = torch.get_num_threads()
    cv2_threads = notebook_recipe.cv2.getNumThreads() if notebook_recipe.cv2 is not None else None
    torch.set_num_threads(1)
    if notebook_recipe.cv2 is not None:
        notebook_recipe.cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if notebook_recipe.cv2 is not None:
            notebook_recipe.cv2.setNumThreads(cv2_threads)


def interleaved_measurements(
    steps: dict[str, Callable[[], int]], seconds: float, rounds: int = 3
) -> dict[str, tuple[float, Interval]]:
    """Each step function's best round of ``rounds`` interleaved ones (it returns the images it did): (images/s,
    the machine's load during that round, :class:`cxr_vit.benchmarks.load.Interval`)."""
    best: dict[str, tuple[float, Interval]] = {}
    for _ in range(rounds):
        for name, step in steps.items():
            step()  # warm caches and lazy state outside the timing
            done = 0
            with LoadMeter() as meter:
                start = time.perf_counter()
                while (elapsed := time.perf_counter() - start) < seconds / rounds or done == 0:
                    done += step()
            if name not in best or done / elapsed > best[name][0]:
                best[name] = (done / elapsed, meter.interval)
    return best


def interleaved_rates(steps: dict[str, Callable[[], int]], seconds: float, rounds: int = 3) -> dict[str, float]:
    """Images/s of each step function (it returns the images it did), best of ``rounds`` interleaved rounds."""
    return {name: rate for name, (rate, _) in interleaved_measurements(steps, seconds, rounds).items()}


def measure_cpu_pipelines(args, paths, labels, dataset, cache_dir: Path, data_config) -> dict[str, Any]:
    """Per-core images/s: the notebook recipe's per-image path, ours (cache read + batch augmentation), `datasets`."""
    rng = np.random.default_rng(0)
    notebook_dataset = notebook_recipe.NotebookDataset(
        paths, labels, notebook_recipe.notebook_transform(args.image_size)
    )
    notebook_order = itertools.cycle(range(len(notebook_dataset)))
    cached = CachedImageDataset(cache_dir)
    transform = BatchImageTransform(data_config, intensity=IntensityAugment())  # train.py's default recipe
    hf_view = dataset.with_transform(ModelImages(eval_geometry(data_config)))

    def notebook_step() -> int:
        notebook_dataset[next(notebook_order)]
        return 1

    def batch_indices() -> list[int]:
        return rng.integers(0, len(cached), args.cpu_batch_size).tolist()

    def ours_step() -> int:
        transform(cached.__getitems__(batch_indices())["pixel_values"], training=True)
        return args.cpu_batch_size

    def read_step() -> int:
        cached.__getitems__(batch_indices())
        return args.cpu_batch_size

    def datasets_step() -> int:
        indices = rng.integers(0, len(hf_view), notebook_recipe.NOTEBOOK_BATCH_SIZE).tolist()
        collate_images(hf_view.__getitems__(indices))
        return len(indices)

    steps = {"notebook": notebook_step, "ours": ours_step, "ours_read_only": read_step, "datasets_path": datasets_step}
    with one_thread():
        rates = interleaved_rates(steps, args.cpu_seconds)
    return {
        "notebook_img_per_s": rates["notebook"],
        "ours_img_per_s": rates["ours"],
        "ours_read_only_img_per_s": rates["ours_read_only"],
        "datasets_path_img_per_s": rates["datasets_path"],
        "speedup": rates["ours"] / rates["notebook"],
        "speedup_read_only": rates["ours_read_only"] / rates["notebook"],
        "notebook_decoder": notebook_recipe.decoder_name(),
        "png_kb_mean": float(np.mean([Path(path).stat().st_size for path in paths]) / 1024),
        "threads": 1,
    }
