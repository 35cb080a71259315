"""compare_encoders.py end to end on the bundled data (two tiny encoders, one of them a converted DINOv2 folder),
and the paired bootstrap it reports."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import REPO
from test_encoders import dinov2_folder

from cxr_vit.comparison import paired_bootstrap
from cxr_vit.constants import LABELS
from cxr_vit.metrics import label_scores

TINY_RUN = {"pretrained": False, "per_device_train_batch_size": 32, "per_device_eval_batch_size": 64,
            "learning_rate": 1.0e-3, "save_total_limit": 1, "report_to": "none"}  # fmt: skip


def synthetic(n_patients: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), 2)
    targets = (rng.random((len(groups), len(LABELS))) < 0.3).astype(np.int64)
    noise = rng.random(targets.shape)
    return targets, groups, noise


def test_paired_bootstrap_of_a_model_with_itself_finds_no_difference():
    targets, groups, noise = synthetic()
    result = paired_bootstrap(noise, noise, targets, groups, n_bootstrap=200)
    assert result["difference"] == 0.0 and result["p_value"] == 1.0


def test_paired_bootstrap_finds_a_real_difference_and_not_a_chance_one():
    targets, groups, noise = synthetic()
    informed = 0.6 * targets + noise  # AUC near 0.9 against near 0.5
    better = paired_bootstrap(informed, noise, targets, groups, n_bootstrap=500)
    assert better["difference"] > 0.2 and better["ci_low"] > 0 and better["p_value"] < 0.01
    other_noise = synthetic(seed=1)[2]
    chance = paired_bootstrap(other_noise, noise, targets, groups, n_bootstrap=500)
    assert chance["p_value"] > 0.05 and chance["ci_low"] < 0 < chance["ci_high"]


@pytest.mark.slow
def test_compare_encoders_end_to_end(tmp_path, prepared_mini):
    _, dinov2 = dinov2_folder(tmp_path)  # a tiny random "RAD-DINO" in transformers' format, fine-tuned with LoRA
    configs = {
        "vit_full": {**TINY_RUN, "model_name": "vit_tiny_patch16_224", "image_size": 32,
                     "model_kwargs": {"depth": 1}},
        "dinov2_lora": {**TINY_RUN, "model_name": str(dinov2), "finetune": "lora", "lora_rank": 4},
    }  # fmt: skip
    paths = []
    for name, config in configs.items():
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(config))
    output = tmp_path / "compare"
    command = [sys.executable, "scripts/compare_encoders.py", "--dataset_name", str(prepared_mini), "--encoders",
               *map(str, paths), "--output_dir", str(output), "--n_bootstrap", "200", "--num_train_epochs", "1",
               "--max_train_samples", "96", "--max_eval_samples", "64", "--throughput_skip_steps", "1"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    comparison = json.loads((output / "comparison.json").read_text())
    by_name = {entry["name"]: entry for entry in comparison["encoders"]}
    assert list(by_name) == ["vit_full", "dinov2_lora"]
    assert by_name["vit_full"]["finetune"] == "full" and by_name["dinov2_lora"]["finetune"] == "lora"
    assert 0 < by_name["dinov2_lora"]["trainable_parameters"] < by_name["vit_full"]["trainable_parameters"]
    assert all(entry["images_per_second"] > 0 for entry in comparison["encoders"])
    (pair,) = comparison["pairs"]
    assert (pair["a"], pair["b"]) == ("vit_full", "dinov2_lora") and 0 < pair["p_value"] <= 1
    # the table's AUCs are the models' own: the saved models predict the test split again through the library
    from cxr_vit import load_chestxray14, load_model
    from cxr_vit.inference import Classifier

    test = load_chestxray14(str(prepared_mini))["test"]
    aucs = {}
    for name in configs:
        probabilities, targets = Classifier(load_model(str(output / name)), device="cpu").predict_dataset(
            test, progress=False
        )
        scores = label_scores(probabilities, targets, warn=False)
        aucs[name] = scores.macro()
        assert by_name[name]["auc_macro"]["value"] == pytest.approx(aucs[name], abs=1e-9)
    assert pair["difference"] == pytest.approx(aucs["vit_full"] - aucs["dinov2_lora"], abs=1e-9)
    markdown = (output / "comparison.md").read_text()
    assert "vit_full - dinov2_lora" in markdown and f"{pair['p_value']:.4f}" in markdown
