"""Temperature-scale a cxr-vit model per label on the validation split, into a new model folder.

    python scripts/calibrate.py --model outputs/quickstart --dataset_name data/nih_mini_prepared \
        --output_dir outputs/quickstart_calibrated [--split validation] [--bias auto|always|never]

Fits, per label, sigmoid(logit / T + b) to the validation labels (Guo et al. 2017; scipy L-BFGS-B on the binary
cross-entropy) and writes --output_dir: a copy of the model whose classifier weight and bias are rescaled
(W / T, b0 / T + b), so AutoModelForImageClassification, pipeline("image-classification") and
timm.create_model("hf-hub:...") return the calibrated probabilities with no custom code. Its config.json records
T and b per label and where they were fitted (key cxr_vit_calibration); stored thresholds are moved to the
calibrated scale, so every decision stays the same. The training record (run_args.yaml, the results files, the
curves) is copied beside it and a model card with the temperatures is written. The original folder is only read.

--bias auto (the default) fits T alone unless a bias per label lowers the validation negative log-likelihood by
more than one nat per label (Akaike's criterion): a model trained with --pos_weight has shifted logits, which only
a bias undoes; on an unshifted model the bias would fit noise. Scaling is monotone per label, so AUCs do not move.
Then evaluate the new folder on test: evaluate.py reports ECE before and after.

Exit code: 0 done, 2 bad arguments (model, dataset, split, output folder).
"""

import argparse
import logging
import shutil
import sys
from pathlib import Path

from cxr_vit import Classifier, NIHDataError, load_chestxray14, load_model, save_model
from cxr_vit.cards import write_model_card
from cxr_vit.cli import (
    add_dataset_arguments,
    add_model_arguments,
    add_runtime_arguments,
    check_runtime_arguments,
    public_dataset,
)
from cxr_vit.constants import LABELS, TRAINING_CURVES_NAME
from cxr_vit.data import select_splits
from cxr_vit.evaluation.calibration import BIAS_CHOICES, calibrate_model, fit_calibration, logits_from_probabilities
from cxr_vit.prediction import ModelLoadError
from cxr_vit.public_names import model_reference

# What the training run left beside the weights that still describes the calibrated model (AUCs do not change).
RECORD_FILES = (
    "run_args.yaml",
    "train_results.json",
    "eval_results.json",
    "test_results.json",
    "all_results.json",
    TRAINING_CURVES_NAME,
)


def check_output_dir(model: str, output_dir: Path) -> None:
    """A new folder: never the model's own, never one that already holds files."""
    if Path(model).is_dir() and Path(model).resolve() == output_dir.resolve():
        raise ValueError(f"--output_dir {output_dir} is the model's folder: the original is never overwritten")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(f"--output_dir {output_dir} exists and is not an empty folder: choose a new one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    add_dataset_arguments(parser, "validation", "Where T and b are fitted (default: validation).")
    parser.add_argument("--output_dir", required=True, help="The new model folder (must not exist or be empty).")
    parser.add_argument("--bias", default="auto", choices=BIAS_CHOICES, help="Fit a bias per label (see above).")
    add_runtime_arguments(parser, batch_size=64, workers="DataLoader processes.")
    args = parser.parse_args(argv)
    check_runtime_arguments(parser, args)
    output_dir = Path(args.output_dir)

    try:
        check_output_dir(args.model, output_dir)
        model = load_model(args.model)
        dataset = load_chestxray14(args.dataset_name, args.dataset_config_name, args.split_seed)
        (split,) = select_splits(dataset, [args.split], args.dataset_name)
    except (ModelLoadError, NIHDataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.split == "test":
        print("warning: fitting on 'test' leaves no untouched split to measure the calibration on", file=sys.stderr)

    classifier = Classifier(model, device=args.device, precision=args.precision)
    probabilities, targets = classifier.predict_dataset(split, args.batch_size, args.num_workers, args.split)
    scaling = fit_calibration(logits_from_probabilities(probabilities), targets, bias=args.bias)
    # recorded in the calibrated config.json, which is published: names, not local paths
    fitted_on = {"model": model_reference(args.model), "dataset": public_dataset(args, dataset).name}
    fitted_on.update(split=args.split, images=len(targets), precision=classifier.runtime)
    try:
        calibrated = calibrate_model(model, scaling, fitted_on)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    save_model(calibrated, output_dir)
    if Path(args.model).is_dir():
        for name in RECORD_FILES:
            if (Path(args.model) / name).is_file():
                shutil.copy2(Path(args.model) / name, output_dir / name)
    write_model_card(output_dir)

    print(f"{scaling.bias_rule}")
    print(f"{'label':<20} {'T':>8} {'b':>8} {'val BCE before':>15} {'after':>8}")
    for index, label in enumerate(LABELS):
        note = f"  (left unscaled: {scaling.skipped[label]})" if label in scaling.skipped else ""
        print(
            f"{label:<20} {scaling.temperature[index]:8.3f} {scaling.bias[index]:+8.3f} "
            f"{scaling.nll_before[index]:15.4f} {scaling.nll_after[index]:8.4f}{note}"
        )
    print(f"wrote the calibrated model to {output_dir} ({args.model} untouched); measure it on test with:")
    evaluate = f"--model {output_dir} --dataset_name {args.dataset_name} --output_dir {output_dir / 'evaluation'}"
    print(f"  python scripts/evaluate.py {evaluate}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
