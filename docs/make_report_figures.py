"""Draw docs/images/reliability_quickstart.png and subgroup_forest_quickstart.png with the project's own scripts.

On the bundled real NIH mini set (data/nih_mini): scripts/train.py with configs/quickstart.yaml (a random-init
ViT-Tiny at 64 px, 4 epochs, --pos_weight true), scripts/calibrate.py on its validation split, scripts/evaluate.py
of the calibrated model on test. The reliability diagrams show each label before and after the temperature
scaling, the forest plot the subgroup macro AUCs. Everything is written to a temporary folder except the two
figures; the numbers of the run are printed. About a minute on a 2-core CPU.

    python docs/make_report_figures.py [--work_dir /tmp/cxr_vit_figures] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"
FIGURES = {
    "reliability_diagram.png": "reliability_quickstart.png",
    "subgroup_forest.png": "subgroup_forest_quickstart.png",
}


def run(*args: str) -> None:
    print("$ python " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=REPO, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default=None, help="Where the run goes (default: a temporary folder).")
    parser.add_argument("--keep", action="store_true", help="Keep --work_dir afterwards.")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="cxr_vit_figures_"))
    prepared, model, calibrated = work / "prepared", work / "quickstart", work / "calibrated"
    try:
        run("scripts/train.py", "--config", "configs/quickstart.yaml", "--dataset_name", str(prepared),
            "--output_dir", str(model), "--report_to", "none")  # fmt: skip
        run("scripts/calibrate.py", "--model", str(model), "--dataset_name", str(prepared), "--output_dir",
            str(calibrated))  # fmt: skip
        run("scripts/evaluate.py", "--model", str(calibrated), "--dataset_name", str(prepared), "--output_dir",
            str(calibrated / "evaluation"))  # fmt: skip
        IMAGES.mkdir(parents=True, exist_ok=True)
        for name, target in FIGURES.items():
            shutil.copy(calibrated / "evaluation" / name, IMAGES / target)
            print(f"wrote {IMAGES / target}")
        calibration = json.loads((calibrated / "evaluation" / "report.json").read_text())["calibration"]
        before, after = calibration["uncalibrated"], calibration["model"]
        ece = f"test ECE (macro, 14 findings) {before['ece_macro']:.4f} -> {after['ece_macro']:.4f}"
        brier = f"Brier {before['brier_macro']:.4f} -> {after['brier_macro']:.4f}"
        print(f"{ece}; {brier}; {calibration['scaling']['bias_rule']}")
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
