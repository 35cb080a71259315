"""Command-line options the inference scripts share (evaluate.py, predict.py, calibrate.py), defined once."""

from __future__ import annotations

import argparse

from .data import DEFAULT_SPLIT_SEED
from .data.gpu_augment import EVAL_VIEWS
from .inference import PRECISIONS
from .onnx_model import BACKENDS


def add_model_arguments(parser: argparse.ArgumentParser, ensemble: str | None = None, backend: bool = False) -> None:
    """``--model`` (one; repeatable for an ensemble when ``ensemble`` says what the first model is used for),
    with an ensemble ``--tta``, and with ``backend`` ``--backend``."""
    if backend:
        add_backend_argument(parser)
    if ensemble is None:
        parser.add_argument("--model", required=True, help="A cxr-vit model folder or Hub id (only read).")
        return
    parser.add_argument(
        "--model",
        required=True,
        action="append",
        help=f"A cxr-vit model folder or Hub id; repeat it for an ensemble (probabilities averaged; {ensemble}).",
    )
    parser.add_argument(
        "--tta", type=int, default=1, help=f"Fixed views averaged per image: 1 (the centre crop) to {EVAL_VIEWS}."
    )


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend torch|onnx``: what runs the model; the preprocessing, thresholds and report are the same."""
    parser.add_argument(
        "--backend",
        default="torch",
        choices=BACKENDS,
        help="torch: the model folder in PyTorch; onnx: --model is a folder of scripts/export_onnx.py, run by ONNX "
        "Runtime on the CPU (no heatmaps: they need gradients).",
    )


def add_dataset_arguments(parser: argparse.ArgumentParser, split: str, split_help: str) -> None:
    """``--dataset_name``, ``--dataset_config_name``, ``--split`` and ``--split_seed``."""
    parser.add_argument("--dataset_name", required=True, help="A prepared dataset folder or Hub id.")
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--split", default=split, help=split_help)
    parser.add_argument(
        "--split_seed",
        type=int,
        default=DEFAULT_SPLIT_SEED,
        help="For a dataset without validation/test splits: the seed they are carved with (as in train.py).",
    )


def add_runtime_arguments(parser: argparse.ArgumentParser, batch_size: int, workers: str) -> None:
    """``--batch_size``, ``--num_workers``, ``--device`` and ``--precision``."""
    parser.add_argument("--batch_size", type=int, default=batch_size)
    parser.add_argument("--num_workers", type=int, default=0, help=workers)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available).")
    parser.add_argument(
        "--precision", default="auto", choices=PRECISIONS, help="auto: bf16 on a GPU with native bf16, else fp32."
    )


def check_runtime_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One message per bad value, the way argparse reports its own."""
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    if not 1 <= getattr(args, "tta", 1) <= EVAL_VIEWS:
        parser.error(f"--tta must be between 1 (the centre crop) and {EVAL_VIEWS} (centre and four corners)")
