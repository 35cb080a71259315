"""Throughput of a typical notebook recipe vs ours: CPU input path, prepare, cache, worker memory, FLOPs, GPU training.

``scripts/benchmark.py`` runs :func:`run_benchmark` and prints :func:`format_table`. CPU numbers are measured
on one thread (``torch.set_num_threads(1)``, ``cv2.setNumThreads(1)``), so they are images/s per core; the
pipelines are measured in interleaved rounds and each keeps its best round, so another process on the
machine cannot deflate one side only. GPU numbers exist only where CUDA does; elsewhere they are ``None`` and
the table says "not measured yet", never an estimate.

One module per measurement: :mod:`.prepare_cache`, :mod:`.cpu_pipeline`, :mod:`.worker_memory`, :mod:`.flops`,
:mod:`.gpu`; :mod:`.table` prints them. This module chooses the images and runs them in order.
"""

from __future__ import annotations

import os
import platform
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import timm
import torch

from ..data.nih import index_images, multi_hot_matrix, read_labels_csv
from ..data.transforms import eval_geometry
from . import notebook_recipe
from .arguments import MIN_IMAGES, NOT_MEASURED, BenchmarkArguments
from .cpu_pipeline import interleaved_rates, measure_cpu_pipelines, one_thread
from .flops import measure_train_flops
from .gpu import GPU_KEYS, gpu_skipped, measure_gpu, measure_train_script, release_gpu_memory, tile_train_split
from .prepare_cache import measure_cache_build, measure_prepare, repeat_cache
from .synthetic import write_synthetic_nih
from .table import format_table
from .worker_memory import measure_worker_memory

__all__ = [
    "GPU_KEYS",
    "MIN_IMAGES",
    "NOT_MEASURED",
    "BenchmarkArguments",
    "format_table",
    "interleaved_rates",
    "measure_cache_build",
    "measure_cpu_pipelines",
    "measure_gpu",
    "measure_prepare",
    "measure_train_flops",
    "measure_train_script",
    "measure_worker_memory",
    "one_thread",
    "release_gpu_memory",
    "repeat_cache",
    "run_benchmark",
    "tile_train_split",
]


def run_benchmark(args: BenchmarkArguments) -> dict[str, Any]:
    """Measure everything; returns the nested dict written as JSON."""
    with tempfile.TemporaryDirectory(prefix="cxr_vit_bench_") as temporary:
        work = Path(args.work_dir or temporary)
        images_dir, labels_csv = input_images(args, work)
        frame = read_labels_csv(labels_csv)
        index = index_images(images_dir)
        paths, labels = [index[name] for name in frame["image_id"]], multi_hot_matrix(frame)
        data_config = model_data_config(args.model_name, args.image_size)
        results: dict[str, Any] = {"machine": machine_info(), "settings": asdict(args)}
        results["prepare"], dataset = measure_prepare(images_dir, labels_csv, work, args.prepare_image_size)
        results["cache"], cache_dir = measure_cache_build(dataset, work, eval_geometry(data_config))
        read_dir = repeat_cache(cache_dir, work / "cache" / "repeated", args.read_cache_mb)
        results["cpu_pipeline"] = measure_cpu_pipelines(args, paths, labels, dataset, read_dir, data_config)
        results["memory"] = measure_worker_memory(read_dir)
        sizes = [int(size) for size in args.flops_sizes.split(",") if size.strip()]
        results["flops"] = measure_train_flops(args.model_name, sizes) if sizes else {}
        if torch.cuda.is_available():
            results["gpu"] = measure_gpu(args, paths, labels, read_dir)
            release_gpu_memory()  # the training script below is another process: leave it the whole GPU
            results["gpu"].update(measure_train_script(args, work / "prepared", work / "train_script"))
        else:
            results["gpu"] = gpu_skipped()
        results["device"] = results["gpu"]["device"] or f"cpu: {results['machine']['cpu']}"
    return results


def input_images(args: BenchmarkArguments, work: Path) -> tuple[Path, Path]:
    """(images_dir, labels_csv): synthesized 1024 px PNGs, or the first ``num_images`` rows of real ones."""
    if args.images_dir is None:
        return write_synthetic_nih(work / "synthetic", args.names_csv, args.num_images, args.synthetic_size)
    import pandas as pd

    index = index_images(args.images_dir)
    rows = pd.read_csv(args.labels_csv, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    rows = rows[rows["Image Index"].isin(index)].head(args.num_images)
    subset = work / Path(args.labels_csv).name
    work.mkdir(parents=True, exist_ok=True)
    rows.to_csv(subset, index=False)
    return Path(args.images_dir), subset


def model_data_config(model_name: str, image_size: int) -> dict[str, Any]:
    """timm's data config of ``model_name`` at ``image_size``, without building the model."""
    pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
    config = timm.data.resolve_data_config(pretrained_cfg.to_dict() if pretrained_cfg else {}, verbose=False)
    return {**config, "input_size": (3, image_size, image_size)}


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "timm_fused_attention": timm.layers.use_fused_attn(),  # F.scaled_dot_product_attention in ViT blocks
        "notebook_decoder": notebook_recipe.decoder_name(),
    }
