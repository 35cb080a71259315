"""Throughput of a typical notebook recipe vs ours: CPU input path, prepare, cache, worker memory, FLOPs, GPU training.

``scripts/benchmark.py`` runs :func:`run_benchmark` and prints :func:`format_table`. CPU numbers are measured
on one thread (``torch.set_num_threads(1)``, ``cv2.setNumThreads(1)``), so they are images/s per core; the
pipelines are measured in interleaved rounds and each keeps its best round, so another process on the
machine cannot deflate one side only. GPU numbers exist only where CUDA does; elsewhere they are ``None`` and
the table says "not measured yet", never an estimate.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ..data.cache import IMAGES_FILE, ensure_cache, write_cache
from ..data.cached_dataset import CachedImageDataset, collate_batch
from ..data.gpu_augment import BatchImageTransform
from ..data.intensity import IntensityAugment
from ..data.nih import index_images, multi_hot_matrix, read_labels_csv
from ..data.transforms import EvalGeometry, ModelImages, collate_images, eval_geometry
from . import notebook_recipe
from .synthetic import write_synthetic_nih

NOT_MEASURED = "not measured yet"
MIN_IMAGES = 24  # fewer rows can leave a patient-wise split empty


@dataclass
class BenchmarkArguments:
    """Options of ``scripts/benchmark.py``; the defaults run in about 20 s on a 2-core CPU."""

    images_dir: str | None = field(default=None, metadata={"help": "Real NIH PNGs; default: synthesize them."})
    labels_csv: str | None = field(default=None, metadata={"help": "Their label CSV (either NIH format)."})
    names_csv: str = field(
        default="data/nih_mini/sample_labels.csv",
        metadata={"help": "Real NIH rows that name the synthesized images (the repository's bundled CSV)."},
    )
    output_json: str | None = field(default=None, metadata={"help": "Write the results here as JSON."})
    num_images: int = field(default=32, metadata={"help": f"Images to use (at least {MIN_IMAGES})."})
    synthetic_size: int = field(default=1024, metadata={"help": "Side of synthesized PNGs (NIH: 1024)."})
    prepare_image_size: int = field(default=256, metadata={"help": "--image_size of the prepare step."})
    model_name: str = field(default="vit_base_patch16_224", metadata={"help": "timm architecture."})
    image_size: int = field(default=224, metadata={"help": "Model input size."})
    cpu_batch_size: int = field(
        default=32,
        metadata={"help": "Batch of our CPU measurement (at 64 x 224 px the 38 MB output is page-faulted anew)."},
    )
    cpu_seconds: float = field(default=1.5, metadata={"help": "Seconds per CPU pipeline, over 3 rounds."})
    read_cache_mb: int = field(
        default=128,
        metadata={"help": "Our reads use the cache repeated to this size, so batches come from RAM, not CPU caches."},
    )
    batch_size: int = field(default=256, metadata={"help": "Our GPU training batch."})
    gpu_steps: int = field(default=30, metadata={"help": "Timed GPU steps per measurement."})
    gpu_warmup_steps: int = field(default=5, metadata={"help": "Untimed steps first (torch.compile runs here)."})
    num_workers: int = field(default=4, metadata={"help": "DataLoader workers of our plain-loop GPU run."})
    torch_compile: bool = field(default=True, metadata={"help": "torch.compile our model on the GPU."})
    flops_sizes: str = field(
        default="224,384,448,512",
        metadata={"help": "Input sizes whose training FLOPs per image are counted (comma-separated; '' to skip)."},
    )
    train_script: str = field(
        default="scripts/train.py", metadata={"help": "The training script timed end to end (accelerate launch)."}
    )
    accelerate_config: str = field(default="accelerate_config.yaml", metadata={"help": "Its accelerate config."})
    train_script_timeout: int = field(
        default=1200, metadata={"help": "Seconds before a hung training-script run is stopped (an error)."}
    )
    work_dir: str | None = field(default=None, metadata={"help": "Keep the files here (default: a temp dir)."})

    def __post_init__(self):
        if self.num_images < MIN_IMAGES:
            raise ValueError(f"--num_images must be at least {MIN_IMAGES}, got {self.num_images}")
        if (self.images_dir is None) != (self.labels_csv is None):
            raise ValueError("give both --images_dir and --labels_csv, or neither (synthesized images)")


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


# ---- compute -------------------------------------------------------------------------------------


def measure_train_flops(model_name: str, sizes: list[int]) -> dict[str, dict[str, float]]:
    """FLOPs of one training step (forward + backward) per image at each input size, relative to the first.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device: exact for the matrix products
    and attention, machine-independent, and instant (nothing is computed).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    for size in sizes:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, num_classes=15, img_size=size)
            images = torch.randn(1, 3, size, size)
        counter = FlopCounterMode(display=False)
        with counter:
            model(images).sum().backward()
        counts[size] = counter.get_total_flops()
    return {str(size): {"gflop": flops / 1e9, "relative": flops / counts[sizes[0]]} for size, flops in counts.items()}


# ---- inputs ------------------------------------------------------------------------------------


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


# ---- prepare and cache ---------------------------------------------------------------------------


def measure_prepare(images_dir: Path, labels_csv: Path, work: Path, image_size: int):
    """``prepare_dataset`` wall time (one process) and the prepared splits as one dataset."""
    import datasets

    from ..data import prepare_dataset

    output = work / "prepared"
    start = time.perf_counter()
    report = prepare_dataset(images_dir, labels_csv, output, image_size=image_size)
    seconds = time.perf_counter() - start
    count = sum(report.split_rows.values())
    splits = datasets.load_dataset(str(output), cache_dir=str(work / "hf_cache"))
    dataset = datasets.concatenate_datasets([splits[name] for name in splits])
    return {"images": count, "seconds": seconds, "img_per_s": count / seconds, "image_size": image_size}, dataset


def measure_cache_build(dataset, work: Path, geometry: EvalGeometry) -> tuple[dict[str, Any], Path]:
    image_size = geometry.resize_size
    directory = work / "cache" / f"all-{image_size}px"
    start = time.perf_counter()
    ensure_cache(dataset, directory, geometry)
    seconds = time.perf_counter() - start
    megabytes = (directory / IMAGES_FILE).stat().st_size / 2**20
    info = {"images": len(dataset), "seconds": seconds, "img_per_s": len(dataset) / seconds}
    return {**info, "image_size": image_size, "megabytes": megabytes, "threads": min(8, os.cpu_count() or 1)}, directory


def repeat_cache(source: Path, directory: Path, megabytes: int) -> Path:
    """The source cache's images repeated to at least ``megabytes``: a benchmark with 32 images would otherwise
    read every batch from the CPU's own caches, which no real dataset does."""
    images = CachedImageDataset(source).images
    count = max(len(images), megabytes * 2**20 // images[0].size)

    def read_images(start: int, stop: int) -> list[Image.Image]:
        return [Image.fromarray(np.asarray(images[i % len(images)])) for i in range(start, stop)]

    side = images.shape[-1]  # already squares of the eval resize side: stored as they are
    return write_cache(directory, read_images, np.zeros((count, 15), np.float32), EvalGeometry(side, side, "bicubic"))


# ---- CPU input pipelines -------------------------------------------------------------------------


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


def interleaved_rates(steps: dict[str, Callable[[], int]], seconds: float, rounds: int = 3) -> dict[str, float]:
    """Images/s of each step function (it returns the images it did), best of ``rounds`` interleaved rounds."""
    best = dict.fromkeys(steps, 0.0)
    for _ in range(rounds):
        for name, step in steps.items():
            step()  # warm caches and lazy state outside the timing
            done, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds / rounds or done == 0:
                done += step()
            best[name] = max(best[name], done / elapsed)
    return best


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


# ---- memory per DataLoader worker ----------------------------------------------------------------


def process_memory_kb(mapped_name: str = IMAGES_FILE) -> tuple[int, int]:
    """(anonymous kB, resident kB of mappings of files named ``mapped_name``) of this process, from smaps."""
    anonymous = mapped = 0
    in_file = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            key = line.split(maxsplit=1)[0]
            if not key.endswith(":"):  # a mapping's header line: "start-end perms offset dev inode [path]"
                in_file = line.rstrip().endswith(mapped_name)
            elif key == "Anonymous:":
                anonymous += int(line.split()[1])
            elif key == "Rss:" and in_file:
                mapped += int(line.split()[1])
    return anonymous, mapped


class _MemoryProbe(Dataset):
    """Wraps a :class:`CachedImageDataset`; each batch also reports the worker's memory before and after."""

    def __init__(self, inner: CachedImageDataset):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        before = process_memory_kb()[0]
        batch = self.inner.__getitems__(indices)
        after, mapped = process_memory_kb()
        batch["probe"] = torch.tensor([os.getpid(), before, after, mapped])
        return batch


def measure_worker_memory(cache_dir: Path, num_workers: int = 2) -> dict[str, Any]:
    """Read a whole cache through worker processes: their private memory must not grow by a dataset copy."""
    if not Path("/proc/self/smaps").is_file():
        return {"status": "not measured (needs Linux /proc)"}
    loader = DataLoader(
        _MemoryProbe(CachedImageDataset(cache_dir)),
        batch_size=64,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=collate_batch,
    )
    first: dict[int, int] = {}
    last: dict[int, tuple[int, int]] = {}
    for batch in loader:
        pid, before, after, mapped = batch["probe"].tolist()
        first.setdefault(pid, before)
        last[pid] = (after, mapped)
    growth = {pid: (last[pid][0] - first[pid]) / 1024 for pid in first}
    return {
        "cache_mb": (cache_dir / IMAGES_FILE).stat().st_size / 2**20,
        "workers": len(first),
        "max_worker_private_growth_mb": max(growth.values()),
        "max_worker_cache_mapped_mb": max(mapped for _, mapped in last.values()) / 1024,
        "note": "private: anonymous memory grown over a full epoch; mapped: shared page-cache pages of the memmap",
    }


# ---- GPU -----------------------------------------------------------------------------------------


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

    splits = datasets.load_dataset(str(prepared))
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


# ---- report --------------------------------------------------------------------------------------


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return NOT_MEASURED
    return f"{value:,.0f}{unit}" if value >= 100 else f"{value:,.1f}{unit}"


def format_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table: what each row measures, and its number."""
    cpu, gpu, prep, cache, memory = (results[k] for k in ("cpu_pipeline", "gpu", "prepare", "cache", "memory"))
    machine, settings = results["machine"], results["settings"]
    size = settings["image_size"]
    source = f"{settings['synthetic_size']} px synthetic" if settings["images_dir"] is None else "real NIH"
    compiled = "torch.compile" if settings["torch_compile"] else "eager"
    rows = [
        (
            "CPU, notebook recipe (per core)",
            f"{cpu['notebook_decoder']} decode of a {source} PNG (~{cpu['png_kb_mean']:.0f} KB) + "
            "ToPILImage/Resize/flip/RandomRotation/ToTensor/Normalize",
            _number(cpu["notebook_img_per_s"], " img/s"),
        ),
        (
            "CPU, ours (per core)",
            f"sorted batch read from the uint8 memmap cache + batch augmentation on the CPU "
            f"(crop/rotate/shift grid_sample, intensity, 3 channels, normalise) to a {size} px float batch of "
            f"{settings['cpu_batch_size']}",
            f"{_number(cpu['ours_img_per_s'], ' img/s')} ({cpu['speedup']:.0f}x the notebook)",
        ),
        (
            "CPU, ours, read only (per core)",
            "what a DataLoader worker does when the GPU augments: the sorted uint8 batch read",
            f"{_number(cpu['ours_read_only_img_per_s'], ' img/s')} ({cpu['speedup_read_only']:.0f}x the notebook)",
        ),
        (
            "CPU, `datasets` path (per core)",
            f"what a `datasets`-pipeline worker does: decode the prepared {prep['image_size']} px PNG, timm's eval "
            "resize to the uint8 square, collate (the augmentation then runs on the device, as for the cache)",
            _number(cpu["datasets_path_img_per_s"], " img/s"),
        ),
        (
            "prepare (1 process)",
            f"decode {source} PNG, shrink to {prep['image_size']} px, re-encode, Parquet "
            f"({prep['images']} images, {prep['seconds']:.1f} s)",
            _number(prep["img_per_s"], " img/s"),
        ),
        (
            "cache build",
            f"decode prepared PNGs to {cache['image_size']} px uint8 memmap, {cache['threads']} threads "
            f"({cache['images']} images, {cache['seconds']:.2f} s)",
            _number(cache["img_per_s"], " img/s"),
        ),
    ]
    if "cache_mb" in memory:
        rows.append(
            (
                "memory per DataLoader worker",
                f"{memory['workers']} workers read a {memory['cache_mb']:.0f} "
                "MB cache: private memory growth / shared page-cache mapping",
                f"{memory['max_worker_private_growth_mb']:.1f} MB / {memory['max_worker_cache_mapped_mb']:.0f} MB",
            )
        )
    flops = results.get("flops") or {}
    if flops:
        base = next(iter(flops))
        rows.append(
            (
                "training FLOPs per image",
                f"{settings['model_name']} forward + backward (FlopCounterMode), by input size; relative to {base} px",
                ", ".join(f"{size} px: {v['gflop']:.0f} GFLOP ({v['relative']:.2f}x)" for size, v in flops.items()),
            )
        )
    gpu_name = gpu["device"] or "GPU"
    rows += [
        (
            f"{gpu_name}, notebook recipe end to end",
            "fp32, batch 16, Adam, cv2 + PIL per image, num_workers=0",
            _number(gpu["notebook_end_to_end_img_per_s"], " img/s"),
        ),
        (
            f"{gpu_name}, ours model only",
            f"bf16 autocast, batch {settings['batch_size']}, fused AdamW, {compiled}, GPU augmentation of a "
            "resident uint8 batch",
            _number(gpu["ours_model_only_img_per_s"], " img/s"),
        ),
        (
            f"{gpu_name}, ours, plain loop",
            f"the same fed by the memmap cache DataLoader ({settings['num_workers']} workers, pinned), no Trainer",
            _number(gpu["ours_plain_loop_img_per_s"], " img/s"),
        ),
        (
            f"{gpu_name}, ours end to end",
            f"`accelerate launch scripts/train.py` at batch {settings['batch_size']}, {compiled}, its defaults "
            "otherwise (cache input path, workers, bf16, fused AdamW): train_steady_images_per_second",
            _number(gpu["ours_end_to_end_img_per_s"], " img/s"),
        ),
        (
            f"{gpu_name}, peak memory",
            f"torch.cuda.max_memory_allocated of that scripts/train.py run (batch {settings['batch_size']})",
            _number(gpu["peak_memory_gb"], " GiB"),
        ),
    ]
    header = (
        f"Machine: {machine['cpu']}, {machine['cores']} cores; torch {machine['torch']}, timm {machine['timm']} "
        f"(fused attention: {machine['timm_fused_attention']}); device: {results['device']}"
    )
    table = ["| measurement | what it measures | result |", "|---|---|---:|"]
    table += [f"| {name} | {what} | {value} |" for name, what, value in rows]
    return header + "\n\n" + "\n".join(table)
