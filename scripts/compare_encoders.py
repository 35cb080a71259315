"""Train several encoders under the same split and seed, and compare them on the same test images.

    python scripts/compare_encoders.py --dataset_name data/nih_mini_prepared \
        --encoders configs/encoders/imagenet_vit_base.yaml configs/encoders/rad_dino_linear.yaml \
        --output_dir outputs/compare --num_train_epochs 5

Each YAML is a train.py config (model_name, pretrained_weights, finetune, ...); its file name names the encoder.
scripts/train.py trains each one with this --dataset_name, --seed and an --output_dir under this one; any other
flag given here (e.g. --num_train_epochs 5) goes to every run. Then every model predicts the --split through the
one inference path, and comparison.md / comparison.json get the table (macro AUC with a patient-bootstrap CI,
trainable parameters, training images/s) and a paired-bootstrap p-value for each pair (cxr_vit.comparison).
"""

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
from transformers import HfArgumentParser

from cxr_vit import NIHDataError, load_chestxray14, load_model
from cxr_vit.cli import add_dataset_arguments, add_runtime_arguments, check_runtime_arguments
from cxr_vit.comparison import EncoderResult, compare, comparison_markdown
from cxr_vit.data import select_splits
from cxr_vit.inference import Classifier
from cxr_vit.training.config import ARGUMENT_CLASSES

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"
logger = logging.getLogger("compare_encoders")


def train(config: Path, output_dir: Path, dataset_name: str, seed: int, extra: list[str]) -> None:
    command = [sys.executable, str(TRAIN_SCRIPT), "--config", str(config), "--dataset_name", dataset_name,
               "--seed", str(seed), "--output_dir", str(output_dir), *extra]  # fmt: skip
    logger.info("training %s: %s", config.stem, " ".join(command))
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"error: training {config} failed (its log is above); nothing was compared")


def encoder_result(name: str, model_dir: Path, evaluated, args: argparse.Namespace) -> EncoderResult:
    model = load_model(str(model_dir))
    classifier = Classifier(model, device=args.device, precision=args.precision)
    probabilities, _ = classifier.predict_dataset(evaluated, args.batch_size, args.num_workers, name)
    finetune = getattr(model.config, "cxr_vit_finetune", None) or {}
    results = json.loads((model_dir / "train_results.json").read_text())
    return EncoderResult(name, probabilities, finetune.get("mode"), finetune.get("trainable_parameters"),
                         results.get("train_steady_images_per_second"))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", required=True, type=Path, help="train.py YAML configs, 2 or more.")
    parser.add_argument("--output_dir", default="outputs/compare_encoders", type=Path)
    parser.add_argument("--seed", type=int, default=42, help="The training seed of every run.")
    parser.add_argument("--n_bootstrap", type=int, default=1000)
    parser.add_argument("--bootstrap_seed", type=int, default=0)
    add_dataset_arguments(parser, "test", "The split the encoders are compared on (default: test).")
    add_runtime_arguments(parser, batch_size=64, workers="DataLoader workers for prediction.")
    args, extra = parser.parse_known_args(argv)
    _, not_train_flags = HfArgumentParser(ARGUMENT_CLASSES).parse_known_args([*extra, "--output_dir", "."])
    if not_train_flags:  # the other flags go to train.py: a misspelt one stops here, before any run
        parser.error(f"unrecognized arguments: {' '.join(not_train_flags)}")
    check_runtime_arguments(parser, args)
    names = [config.stem for config in args.encoders]
    if len(names) < 2 or len(set(names)) != len(names):
        parser.error(f"--encoders: give two or more YAML files with different names, got {names}")
    missing = [str(config) for config in args.encoders if not config.is_file()]
    if missing:
        parser.error(f"--encoders: no such file: {', '.join(missing)}")
    try:
        dataset = load_chestxray14(args.dataset_name, args.dataset_config_name, args.split_seed)
        (evaluated,) = select_splits(dataset, [args.split], args.dataset_name, columns=["patient_id"])
    except NIHDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    results = []
    for config, name in zip(args.encoders, names, strict=True):
        train(config, args.output_dir / name, args.dataset_name, args.seed, extra)
        results.append(encoder_result(name, args.output_dir / name, evaluated, args))
    targets = np.asarray(evaluated["labels"], dtype=np.int64)
    comparison = compare(results, targets, evaluated["patient_id"], args.n_bootstrap, args.bootstrap_seed)
    comparison.update(dataset=args.dataset_name, split=args.split, training_seed=args.seed, train_flags=extra)
    (args.output_dir / "comparison.json").write_text(json.dumps(comparison, indent=2))
    markdown = comparison_markdown(comparison)
    (args.output_dir / "comparison.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
