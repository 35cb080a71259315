"""GPU training throughput: the notebook recipe and ours in a plain loop, then the real ``accelerate launch
scripts/train.py`` end to end, with its peak memory. Only where CUDA is; tests run the same code on the CPU, tiny."""

from __future__ import annotations

import gc
import itertools
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, RandomSampler

from ..data.cached_dataset import CachedImageDataset, collate_batch
from ..data.gpu_augment import BatchImageTransform
from ..data.intensity import IntensityAugment
from . import notebook_recipe
from .arguments import NOT_MEASURED, BenchmarkArguments

GPU_KEYS = (
    "notebook_end_to_end_img_per_s",
    "ours_model_only_img_per_s",
    "ours_plain_loop_img_per_s",
    "ours_end_to_end_img_per_s",
    "peak_memory_gb",
)


def gpu_skipped() -> dict[str, Any]:
    return {"device": None, "status": f"{NOT_MEASURED} (no CUDA device)", **dict.fromkeys(GPU_KEYS)}


def _forever(loader: DataLoader) -> Iterator:
    if len(loader) == 0:
        raise ValueError("the benchmark needs at least one full batch of images")
    while True:
        yield from loader


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(step: Callable[[Any], int], batches: Iterator, warmup: int, steps: int, device: torch.device) -> float:
    """Images/s of ``steps`` training steps (each returns its batch size) after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step(next(batches))
    _synchronize(device)
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        images += step(next(batches))
    _synchronize(device)
    return images / (time.perf_counter() - start)


def measure_gpu(args: BenchmarkArguments, paths, labels, cache_dir: Path, device: str = "cuda") -> dict[str, Any]:
    """The notebook recipe vs ours in a plain training loop on one device: images/s end to end and model-only.

    The plain loop shows what the recipe reaches without the Trainer around it; :func:`measure_train_script`
    times the real script. Meant for CUDA; ``device="cpu"`` runs the same code (tests use a tiny model).
    """
    from ..modeling import create_model, data_config

    device = torch.device(device)
    on_cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if on_cuda else platform.processor() or "cpu"
    results: dict[str, Any] = {"device": name, "status": "measured"}

    # -- the notebook recipe: fp32, batch 16, Adam, cv2 + PIL transforms in the main process
    model = timm.create_model(args.model_name, pretrained=False, num_classes=15, img_size=args.image_size)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=notebook_recipe.NOTEBOOK_LEARNING_RATE)
    criterion = torch.nn.BCEWithLogitsLoss()
    notebook_dataset = notebook_recipe.NotebookDataset(
        paths, labels, notebook_recipe.notebook_transform(args.image_size)
    )
    notebook_loader = DataLoader(
        notebook_dataset, batch_size=notebook_recipe.NOTEBOOK_BATCH_SIZE, shuffle=True, drop_last=True
    )

    def notebook_step(batch) -> int:
        images, targets = batch
        loss = criterion(model(images.to(device)), targets.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(images)

    results["notebook_end_to_end_img_per_s"] = _timed_steps(
        notebook_step, _forever(notebook_loader), 2, args.gpu_steps, device
    )
    del model, optimizer
    if on_cuda:
        torch.cuda.empty_cache()

    # -- ours: bf16 autocast, batch 256, fused AdamW, optional torch.compile, batch augmentation on the device
    model = create_model(args.model_name, pretrained=False, image_size=args.image_size).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    forward = torch.compile(model) if args.torch_compile else model
    transform = BatchImageTransform(data_config(model), intensity=IntensityAugment())

    def our_step(batch: dict[str, torch.Tensor]) -> int:
        pixels = transform(batch["pixel_values"].to(device, non_blocking=True), training=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = forward(pixel_values=pixels).logits
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].to(device, non_blocking=True))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return len(pixels)

    cached = CachedImageDataset(cache_dir)
    indices = np.random.default_rng(0).integers(0, len(cached), args.batch_size).tolist()
    resident = {key: value.to(device) for key, value in cached.__getitems__(indices).items()}
    results["ours_model_only_img_per_s"] = _timed_steps(
        our_step, itertools.repeat(resident), args.gpu_warmup_steps, args.gpu_steps, device
    )
    warmup = 3
    loader = DataLoader(
        cached,
        batch_size=args.batch_size,
        sampler=RandomSampler(cached, replacement=True, num_samples=args.batch_size * (warmup + args.gpu_steps)),
        num_workers=args.num_workers,
        pin_memory=on_cuda,
        drop_last=True,
        collate_fn=collate_batch,
        persistent_workers=args.num_workers > 0,
    )
    results["ours_plain_loop_img_per_s"] = _timed_steps(our_step, iter(loader), warmup, args.gpu_steps, device)
    results.update(batch_size=args.batch_size, torch_compile=args.torch_compile, num_workers=args.num_workers)
    return results


def release_gpu_memory() -> None:
    """Free what this process's measurements left on the GPU: compiled graphs, then the allocator's cache."""
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


def tile_train_split(prepared: Path, output: Path, min_rows: int) -> Path:
    """A copy of a prepared dataset whose train split is repeated to at least ``min_rows`` rows.

    A timed run must stay inside one epoch, as it would on NIH (about 300 steps of 256 an epoch): a few
    benchmark images would otherwise make an epoch end, with its train-AUC pass, every couple of steps.
    """
    import datasets

    from ..data.local import load_dataset_as_is

    splits = load_dataset_as_is(str(prepared))
    repeats = -(-min_rows // len(splits["train"]))
    tiled = {**splits, "train": datasets.concatenate_datasets([splits["train"]] * repeats)}
    for name, split in tiled.items():
        split.to_parquet(output / "data" / f"{name}-00000-of-00001.parquet")
    return output


def train_script_command(args: BenchmarkArguments, dataset: Path, output_dir: Path, use_cpu: bool) -> list[str]:
    """``accelerate launch scripts/train.py`` for ``gpu_warmup_steps + gpu_steps`` steps of our defaults."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.accelerate_config,
        args.train_script,
        "--dataset_name", str(dataset), "--output_dir", str(output_dir),
        "--model_name", args.model_name, "--pretrained", "false", "--image_size", str(args.image_size),
        "--per_device_train_batch_size", str(args.batch_size), "--torch_compile", str(args.torch_compile),
        "--max_steps", str(args.gpu_warmup_steps + args.gpu_steps),
        "--throughput_skip_steps", str(args.gpu_warmup_steps),
        "--eval_split", "none", "--test_split", "none", "--eval_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", "--report_to", "none", "--use_cpu", str(use_cpu),
    ]  # fmt: skip


def measure_train_script(args: BenchmarkArguments, prepared: Path, work: Path, device: str = "cuda") -> dict:
    """Images/s of the real ``accelerate launch scripts/train.py`` (cache input path, its defaults), end to end.

    Read from the script's own ``train_steady_images_per_second``: every training step after the first
    ``gpu_warmup_steps``, DataLoader and Trainer included; peak GPU memory from ``train_results.json``.
    """
    dataset = tile_train_split(prepared, work / "dataset", args.batch_size * (args.gpu_warmup_steps + args.gpu_steps))
    output_dir = work / "run"
    command = train_script_command(args, dataset, output_dir, use_cpu=device == "cpu")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=args.train_script_timeout)
    except subprocess.TimeoutExpired as err:
        tail = (err.stderr or b"")[-4000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        raise RuntimeError(
            f"{' '.join(command)} ran over --train_script_timeout {args.train_script_timeout} s:\n{tail}"
        ) from err
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    metrics = json.loads((output_dir / "train_results.json").read_text())
    run_args = yaml.safe_load((output_dir / "run_args.yaml").read_text())["CXRTrainingArguments"]
    return {
        "ours_end_to_end_img_per_s": metrics["train_steady_images_per_second"],
        "peak_memory_gb": metrics.get("peak_gpu_memory_gb"),
        "train_script_num_workers": run_args["dataloader_num_workers"],
        "train_script_learning_rate": run_args["learning_rate"],
    }
