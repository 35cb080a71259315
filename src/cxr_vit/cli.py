"""Command-line options the inference scripts share (evaluate.py, predict.py, calibrate.py, app.py), defined once."""

from __future__ import annotations

import argparse

from .data import DEFAULT_SPLIT_SEED
from .data.gpu_augment import EVAL_VIEWS
from .inference import BACKENDS, PRECISION_HELP, PRECISIONS
from .public_names import DatasetReference, dataset_reference


def add_model_arguments(
    parser: argparse.ArgumentParser, ensemble: str | None = None, space_separated: bool = False, backend: bool = False
) -> None:
    """``--model`` (one; several for an ensemble when ``ensemble`` says what the first model is used for), with an
    ensemble ``--tta``, and with ``backend`` ``--backend``.

    An ensemble's models are given by repeating ``--model``, and with ``space_separated`` also as ``--model A B``
    (and both mixed), as most command lines take lists; a script whose positional arguments would be swallowed
    by that form (predict.py's files) takes the repeated form only.
    """
    if backend:
        add_backend_argument(parser)
    if ensemble is None:
        parser.add_argument("--model", required=True, help="A cxr-vit model folder or Hub id (only read).")
        return
    how = "several (--model A B, or --model A --model B)" if space_separated else "repeat it (--model A --model B)"
    parser.add_argument(
        "--model",
        required=True,
        action="extend" if space_separated else "append",
        nargs="+" if space_separated else None,
        help=f"A cxr-vit model folder or Hub id; {how} for an ensemble (probabilities averaged; {ensemble}).",
    )
    parser.add_argument(
        "--tta", type=int, default=1, help=f"Fixed views averaged per image: 1 (the centre crop) to {EVAL_VIEWS}."
    )


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend torch|onnx|inductor``: what runs the model; the preprocessing, thresholds and report are the same."""
    parser.add_argument(
        "--backend",
        default="torch",
        choices=BACKENDS,
        help="torch: the model folder in PyTorch; onnx: --model is a folder of scripts/export_onnx.py, run by ONNX "
        "Runtime on the CPU; inductor: a folder of scripts/export_inductor.py (static int8), compiled by "
        "torch.compile on the CPU at the first batch. Exports have no heatmaps (they need gradients).",
    )


def add_dataset_arguments(parser: argparse.ArgumentParser, split: str, split_help: str) -> None:
    """``--dataset_name``, ``--dataset_config_name``, ``--split``, ``--split_seed`` and ``--dataset_repo``."""
    parser.add_argument("--dataset_name", required=True, help="A prepared dataset folder or Hub id.")
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--split", default=split, help=split_help)
    parser.add_argument(
        "--split_seed",
        type=int,
        default=DEFAULT_SPLIT_SEED,
        help="For a dataset without validation/test splits: the seed they are carved with (as in train.py).",
    )
    parser.add_argument(
        "--dataset_repo",
        default=None,
        help="Hub id of --dataset_name, to name the data by in what is written (default: the one the prepared "
        "folder records when it was pushed; else it is described, never named by its local path).",
    )


def public_dataset(args: argparse.Namespace, dataset) -> DatasetReference:
    """How written files name ``--dataset_name`` (:mod:`cxr_vit.public_names`); ``dataset``: what it loaded."""
    splits = {name: len(part) for name, part in dataset.items()}
    return dataset_reference(args.dataset_name, args.dataset_repo, args.split_seed, splits)


def add_runtime_arguments(parser: argparse.ArgumentParser, batch_size: int, workers: str | None = None) -> None:
    """``--batch_size``, ``--num_workers`` (where ``workers`` says what they do), ``--device`` and ``--precision``."""
    parser.add_argument("--batch_size", type=int, default=batch_size)
    if workers is not None:
        parser.add_argument("--num_workers", type=int, default=0, help=workers)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available).")
    add_precision_argument(parser)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|bf16`` of :class:`cxr_vit.inference.Classifier`: pass ``args.precision`` to it (or to
    ``Predictor.from_pretrained``) and record ``Classifier.runtime``, what ``auto`` resolved to, beside the output."""
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)


def check_runtime_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One message per bad value, the way argparse reports its own."""
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    if not 1 <= getattr(args, "tta", 1) <= EVAL_VIEWS:
        parser.error(f"--tta must be between 1 (the centre crop) and {EVAL_VIEWS} (centre and four corners)")


def add_calibration_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """The images a static int8 export fixes its activation ranges on: ``--calibration_dataset`` (required by
    ``scripts/export_inductor.py``; by ``export_onnx.py`` only with ``--quantize int8_static``), its split, count
    and split seed."""
    from .onnx_export import CALIBRATION_IMAGES

    parser.add_argument(
        "--calibration_dataset",
        required=required,
        default=None,
        help="A prepared dataset folder or Hub id whose images fix the activation ranges of static int8.",
    )
    parser.add_argument("--calibration_split", default="validation", help="Its split calibrated on (validation; "
                        "never the test split you will report).")  # fmt: skip
    parser.add_argument(
        "--calibration_images", type=int, default=CALIBRATION_IMAGES, help="The first N images of that split."
    )
    parser.add_argument("--split_seed", type=int, default=DEFAULT_SPLIT_SEED, help="As in train.py, for a set "
                        "without validation/test splits.")  # fmt: skip


def calibration_images(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The :class:`cxr_vit.onnx_export.Calibration` of :func:`add_calibration_arguments`' options (None without a
    dataset); a bad count is a usage error."""
    if args.calibration_images < 1:
        parser.error("--calibration_images must be at least 1")
    if args.calibration_dataset is None:
        return None
    from .onnx_export import calibration_from_dataset
    from .prediction import load_model

    return calibration_from_dataset(
        load_model(args.model), args.calibration_dataset, args.calibration_split, args.calibration_images,
        split_seed=args.split_seed,
    )  # fmt: skip
