"""Score models on every image of prepared sets from several sources: one table, model x dataset.

    python scripts/external_validation.py --model outputs/nih_vit --model outputs/nih_chexpert_vit \
        --dataset_name data/chexpert_prepared --dataset_name data/padchest_prepared \
        --output_dir outputs/external [--n_bootstrap 1000]

Each cell is the macro ROC-AUC over the findings that dataset annotates (labels it does not annotate are not
scored), with a patient-bootstrap 95% interval; the per-label AUCs, prevalences and the sensitivity/specificity at
each model's stored thresholds (chosen on its training source's validation split: run scripts/evaluate.py on it
first) are in the JSON. Writes external_validation.json, external_validation.md and external_validation.png
(a forest plot per dataset) to --output_dir. Models and datasets are named by folder name or Hub id. For one
model on one set with subgroups, calibration and its internal figures beside: scripts/evaluate.py --split all.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from cxr_vit import NIHDataError
from cxr_vit.cli import add_runtime_arguments, check_runtime_arguments
from cxr_vit.data import DEFAULT_SPLIT_SEED
from cxr_vit.evaluation.external import ExternalValidationError
from cxr_vit.evaluation.external_table import plot_table, table_markdown, validation_table
from cxr_vit.markdown import format_ci
from cxr_vit.prediction import ModelLoadError

OUTPUT_NAME = "external_validation"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="A cxr-vit model folder or Hub id; repeat it.")
    parser.add_argument("--dataset_name", action="append", required=True, help="A prepared set (folder or Hub id); "
                        "repeat it.")  # fmt: skip
    parser.add_argument("--output_dir", required=True, help="Where the table, its JSON and the figure go.")
    parser.add_argument("--n_bootstrap", type=int, default=1000, help="Patient resamples for the CIs.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the bootstrap.")
    parser.add_argument("--split_seed", type=int, default=DEFAULT_SPLIT_SEED, help="For sets without splits.")
    add_runtime_arguments(parser, batch_size=64, workers="DataLoader processes.")
    args = parser.parse_args(argv)
    check_runtime_arguments(parser, args)
    if args.n_bootstrap < 1:
        parser.error("--n_bootstrap must be at least 1")

    try:
        result = validation_table(
            args.model,
            args.dataset_name,
            n_bootstrap=args.n_bootstrap,
            seed=args.seed,
            batch_size=args.batch_size,
            device=args.device,
            num_workers=args.num_workers,
            precision=args.precision,
            split_seed=args.split_seed,
        )
    except (ModelLoadError, NIHDataError, ExternalValidationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / f"{OUTPUT_NAME}.{suffix}" for suffix in ("json", "md", "png")]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(table_markdown(result))
    plot_table(result, paths[2])
    for cell in result["cells"]:
        findings = len(cell["macro_findings"])
        print(f"{cell['model']} on {cell['dataset']}: macro AUC ({findings} findings) {format_ci(cell['auc_macro'])}")
    print("wrote " + ", ".join(str(path) for path in paths))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
