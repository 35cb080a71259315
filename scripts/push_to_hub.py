"""Push a model folder to the Hugging Face Hub with a model card rendered from its results and evaluation report.

    python scripts/push_to_hub.py --model_dir outputs/nih_sample_vit_base --repo_id you/cxr-vit-base [--private] \
        [--report outputs/nih_sample_vit_base/evaluation] [--dataset_repo you/nih-chestxray14]

Uploads model.safetensors, config.json (model + image-processor config), training_curves.png, the results
files and README.md; run_args.yaml, which holds the run's local paths, only with --include_run_args. The card
names the training data by its Hub id: --dataset_repo, else the one the prepared folder recorded when it was
pushed (prepare_data.py --push_to_hub), else a Hub id given to train.py; otherwise it describes it ("NIH
ChestX-ray14, prepared locally", split seed and counts). No uploaded file names a local path. The repo
then opens with AutoModelForImageClassification, pipeline("image-classification") and
timm.create_model("hf-hub:<repo_id>", pretrained=True).

The evaluation report of scripts/evaluate.py goes up as evaluation/ (report.json, report.md, its figures,
thresholds.json) and the card shows its headline, calibration line, localization line and a short subgroup table.
Which report: --report (a report.json or the folder holding it), else <model_dir>/evaluation if there is one
(evaluate.py --output_dir <model_dir>/evaluation). A report must describe the weights being pushed (report.json
records their fingerprint): a given one that does not is an error; a stale one at the default place is left out
with a warning. A folder made by scripts/calibrate.py gets its temperatures in the card as well.
"""

import argparse
import logging
import sys

from cxr_vit import HubAccessError, push_model
from cxr_vit.cards import ReportMismatchError
from cxr_vit.public_names import LocalPathError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="A scripts/train.py or scripts/calibrate.py --output_dir.")
    parser.add_argument("--repo_id", required=True, help="namespace/name (a bare name goes to your namespace).")
    parser.add_argument("--private", action="store_true", help="Create the repo as private.")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login).")
    parser.add_argument(
        "--report",
        default=None,
        help="A report.json of scripts/evaluate.py, or its folder (default: <model_dir>/evaluation if present).",
    )
    parser.add_argument(
        "--dataset_repo",
        default=None,
        help="Hub id of the training data, for the card (default: the one its prepared folder recorded when pushed).",
    )
    parser.add_argument(
        "--include_run_args",
        action="store_true",
        help="Also upload run_args.yaml (the resolved training arguments, with their local paths).",
    )
    args = parser.parse_args(argv)
    try:
        url = push_model(
            args.model_dir,
            args.repo_id,
            token=args.token,
            private=args.private or None,
            report=args.report,
            dataset_repo=args.dataset_repo,
            include_run_args=args.include_run_args,
        )
    except (HubAccessError, FileNotFoundError, ReportMismatchError, LocalPathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"pushed {args.model_dir} to {url}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
