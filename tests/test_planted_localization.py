"""Which explainer points at the finding? The pointing game on films whose findings sit in known boxes.

tests/planted.py's ``write_planted_boxes`` draws each positive finding's grating only inside its own box, at a
random place per film, and writes the boxes as NIH's BBox_List_2017.csv (1024x1024 space, release names). A
2-block ViT-Tiny learns them through the real scripts (train.py prepares the folder on first use and trains;
evaluate.py --bbox_csv scores each explainer's heatmaps against the boxes of the test split). Where the right answer
is known, the default explainer must point far above chance (the boxes' share of the input) and at least as well as
every other explainer. The same model then goes through calibrate.py, for ECE before and after on test, and a copy
whose logits are planted 3x too sharp must come back with 3x the temperature.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import MINI_IMAGES, MINI_KAGGLE_CSV, REPO
from inference_helpers import load_script
from planted import write_planted_boxes
from test_learnability import RECIPE

from cxr_vit.constants import FINDINGS, LABELS
from cxr_vit.evaluation.calibration import CALIBRATION_KEY
from cxr_vit.evaluation.explainers import DEFAULT_EXPLAINER, EXPLAINERS
from cxr_vit.modeling import save_model
from cxr_vit.prediction import load_model

pytestmark = pytest.mark.slow

evaluate_script = load_script(REPO / "scripts" / "evaluate.py")
calibrate_script = load_script(REPO / "scripts" / "calibrate.py")
PLANTED_T = 3.0


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(root, trained model folder, prepared folder, box list) of a model trained on the planted boxes."""
    root = tmp_path_factory.mktemp("planted_boxes")
    images, labels_csv, bbox_csv = write_planted_boxes(MINI_IMAGES, MINI_KAGGLE_CSV, root / "planted")
    config = root / "recipe.yaml"
    config.write_text(yaml.safe_dump(RECIPE))
    output, prepared = root / "run", root / "prepared"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    data = ["--images_dir", str(images), "--labels_csv", str(labels_csv), "--dataset_name", str(prepared)]
    command = [sys.executable, "scripts/train.py", "--config", str(config), *data, "--output_dir", str(output)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return root, output, prepared, bbox_csv


def evaluate(model, prepared, output_dir, *extra) -> dict:
    args = ["--model", str(model), "--dataset_name", str(prepared), "--output_dir", str(output_dir)]
    assert evaluate_script.main([*args, "--n_bootstrap", "10", *extra]) == 0
    return json.loads((output_dir / "report.json").read_text())


def test_the_default_explainer_points_at_the_planted_findings(planted):
    root, model, prepared, bbox_csv = planted
    reports = {
        name: evaluate(model, prepared, root / f"eval-{name}", "--bbox_csv", str(bbox_csv), "--explainer", name)
        for name in sorted(EXPLAINERS)
    }
    default = reports[DEFAULT_EXPLAINER]
    boxed = [label for label in FINDINGS if default["labels"][label]["auc"]["value"] is not None]
    assert len(boxed) == 8 and default["auc_macro"]["value"] >= 0.9, default["auc_macro"]  # it learned them

    pointing = {name: report["localization"]["overall"]["pointing_accuracy"] for name, report in reports.items()}
    chance = default["localization"]["overall"]["chance_pointing"]
    boxes = default["localization"]["overall"]["n_boxes"]
    print(
        f"\nplanted boxes, test split: {boxes} boxes, macro AUC {default['auc_macro']['value']:.3f}, "
        f"pointing chance {chance:.3f}"
    )
    for name, report in reports.items():
        overall = report["localization"]["overall"]
        print(
            f"  {name:<13} pointing {overall['pointing_accuracy']:.3f}  IoU>=0.3 {overall['iou_accuracy']['0.3']:.3f}"
            f"  IoBB>=0.5 {overall['iobb_accuracy']['0.5']:.3f}"
        )
        assert report["localization"]["overall"]["n_boxes"] == boxes >= 100
    assert pointing[DEFAULT_EXPLAINER] >= 2 * chance, (pointing, chance)
    assert pointing[DEFAULT_EXPLAINER] >= max(pointing.values()), pointing


def test_calibration_of_the_planted_model_and_a_planted_temperature(planted):
    root, model, prepared, _ = planted
    base = ["--dataset_name", str(prepared)]
    assert calibrate_script.main(["--model", str(model), *base, "--output_dir", str(root / "calibrated")]) == 0
    calibration = evaluate(root / "calibrated", prepared, root / "eval-calibrated")["calibration"]
    before, after = calibration["uncalibrated"]["ece_macro"], calibration["model"]["ece_macro"]
    print(
        f"\nplanted model, test ECE (macro, 14 findings): {before:.4f} before, {after:.4f} after; "
        f"{calibration['scaling']['bias_rule']}"
    )
    assert after <= before + 0.01  # fitted on ~100 validation films: no worse, within noise

    # The same model with its logits made 3x too sharp (head weight and bias x3): T comes back 3x as large.
    sharp = load_model(model)
    with torch.no_grad():
        for parameter in sharp.timm_model.get_classifier().parameters():
            parameter.mul_(PLANTED_T)
    save_model(sharp, root / "sharp")
    assert calibrate_script.main(["--model", str(root / "sharp"), *base, "--output_dir", str(root / "sharp_cal")]) == 0
    records = [
        json.loads((root / name / "config.json").read_text())[CALIBRATION_KEY] for name in ("calibrated", "sharp_cal")
    ]
    fitted = [label for label in LABELS if records[0]["labels"][label]["fitted"]]
    ratio = np.array(
        [records[1]["labels"][label]["temperature"] / records[0]["labels"][label]["temperature"] for label in fitted]
    )
    print(f"planted T = {PLANTED_T}: fitted T ratio over {len(fitted)} labels {ratio.min():.4f} - {ratio.max():.4f}")
    np.testing.assert_allclose(ratio, PLANTED_T, rtol=2e-3)
    for label in fitted:
        assert records[1]["labels"][label]["bias"] == pytest.approx(records[0]["labels"][label]["bias"], abs=5e-3)
