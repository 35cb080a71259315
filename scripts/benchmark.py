"""Benchmark a typical notebook recipe against ours: CPU input path, prepare, cache, worker memory, FLOPs, GPU training.

    # synthesized 1024x1024 NIH-like PNGs with real NIH file names; about 20 s on a 2-core CPU
    python scripts/benchmark.py --output_json outputs/benchmark.json

    # real images (the first --num_images rows of the CSV that exist), on a GPU machine
    python scripts/benchmark.py --images_dir data/nih_sample/images --labels_csv data/nih_sample/sample_labels.csv \\
        --num_images 256 --output_json outputs/benchmark_gpu.json

    # CPU inference: PyTorch eager fp32 / bf16 / torch.compile, ONNX Runtime fp32 / int8 dynamic / int8 static, batch
    # 1 and 32, each against its precision's peak with the machine's load, and predict.py end to end on 1024 px PNGs
    # (ViT-B/16 at 224 by default; a few minutes on a 2-core CPU)
    python scripts/benchmark.py --inference --output_json outputs/benchmark_inference.json \
        --inference_markdown outputs/benchmark_inference.md [--planted_model DIR --planted_dataset DIR]

Prints a Markdown table (what each row measures and its number); GPU rows say "not measured yet" without CUDA.
"""

import json
import logging
import os
from pathlib import Path

from cxr_vit.arguments import parse_script_arguments
from cxr_vit.benchmarks.inference import InferenceBenchmarkArguments, format_inference_table, run_inference_benchmark
from cxr_vit.benchmarks.run import BenchmarkArguments, format_table, run_benchmark

REPO = Path(__file__).resolve().parents[1]


def main(args: BenchmarkArguments, inference_args: InferenceBenchmarkArguments | None = None) -> None:
    for name in ("names_csv", "train_script", "accelerate_config"):  # repository files, from any directory
        if not os.path.isabs(getattr(args, name)):
            setattr(args, name, str(REPO / getattr(args, name)))
    if inference_args is not None and inference_args.inference:
        results = run_inference_benchmark(args, inference_args)
        table = format_inference_table(results)
        print(table)
        if inference_args.inference_markdown:
            Path(inference_args.inference_markdown).parent.mkdir(parents=True, exist_ok=True)
            Path(inference_args.inference_markdown).write_text(table + "\n")
            print(f"\nwrote {inference_args.inference_markdown}")
    else:
        results = run_benchmark(args)
        print(format_table(results))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nwrote {args.output_json}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        benchmark_args, inference_benchmark_args = parse_script_arguments(
            BenchmarkArguments, InferenceBenchmarkArguments
        )
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    main(benchmark_args, inference_benchmark_args)
