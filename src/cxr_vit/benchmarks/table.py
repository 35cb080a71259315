"""The results as the Markdown table ``scripts/benchmark.py`` prints."""

from __future__ import annotations

from typing import Any

from .arguments import NOT_MEASURED


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
