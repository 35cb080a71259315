"""From nothing to the official-test figure: download -> prepare -> train -> evaluate -> calibrate, and
reproduction.md with our macro AUROC (patient-bootstrap CI) beside the published ones.

    # the plan and the disk each step needs, with only figures this package measured or computed (it says which)
    python scripts/reproduce.py --data_dir data/nih --recipe official_vit_base --gpus 4 --dry_run

    # the whole chain (fetches what data/nih lacks; --urls FILE or CXR_VIT_NIH_MIRROR for the CSV and lists)
    python scripts/reproduce.py --data_dir data/nih --recipe official_vit_base --gpus 4 --urls nih_urls.txt

Each step is skipped when its output is complete and made from the current inputs and package version, so
running the same command after an interruption (Ctrl-C, a killed job, a lost node) continues from the last
complete step; training resumes from its newest complete checkpoint. A step's time counts its killed
attempts. Writes to --output_dir (default outputs/reproduce_<recipe>): prepared/, model/, evaluation/,
calibrated/, steps/*.json (one per finished step) and reproduction.md.
"""

import logging
import sys
from pathlib import Path

from cxr_vit import NIHDataError
from cxr_vit.arguments import parse_script_arguments
from cxr_vit.release import DownloadError
from cxr_vit.release.reproduce import ReproduceArguments, Reproduction

REPO = Path(__file__).resolve().parents[1]


def main(args: ReproduceArguments) -> int:
    try:
        reproduction = Reproduction(args, scripts_dir=REPO / "scripts", configs_dir=REPO / "configs")
        if args.dry_run:
            print(reproduction.plan())
            return 0
        print(f"wrote {reproduction.run()}")
    except (DownloadError, NIHDataError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (reproduce_args,) = parse_script_arguments(ReproduceArguments)
    sys.exit(main(reproduce_args))
