"""End to end: the scripts run as a user runs them, in subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MINI_IMAGES, MINI_KAGGLE_CSV, REPO
from transformers import AutoModelForImageClassification

from cxr_vit.constants import LABELS, NO_FINDING


def run(*args, cwd=REPO, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def prepare_data(labels_csv: Path, output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """``scripts/prepare_data.py`` on the bundled images with ``labels_csv``."""
    return run(sys.executable, "scripts/prepare_data.py", "--images_dir", str(MINI_IMAGES),
               "--labels_csv", str(labels_csv), "--output_dir", str(output_dir), *extra)  # fmt: skip


def test_prepare_data_script(tmp_path):
    out = tmp_path / "prepared"
    result = prepare_data(MINI_KAGGLE_CSV, out, "--image_size", "32")
    assert result.returncode == 0, result.stderr
    assert "1000 CSV rows" in result.stdout and "skipped 0" in result.stdout
    import datasets

    dataset = datasets.load_dataset(str(out))
    assert dataset["train"][0]["image"].size == (32, 32)


def test_prepare_data_script_reports_bad_rows(tmp_path):
    csv = tmp_path / "bad.csv"
    lines = MINI_KAGGLE_CSV.read_text().splitlines()
    fields = lines[5].split(",")
    fields[1] = "Mass|Pneumonitis"  # line 6 of the file: a label NIH does not have
    lines[5] = ",".join(fields)
    csv.write_text("\n".join(lines) + "\n")
    result = prepare_data(csv, tmp_path / "out")
    assert result.returncode == 2
    assert "line 6" in result.stderr and "unknown label(s) ['Pneumonitis']" in result.stderr
    assert "Traceback" not in result.stderr


def tensorboard_scalars(log_dir: Path) -> dict[str, float]:
    """The last value of every scalar in the TensorBoard event files under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        scalars.update({tag: accumulator.Scalars(tag)[-1].value for tag in accumulator.Tags()["scalars"]})
    assert scalars, f"no TensorBoard scalars under {log_dir}"
    return scalars


@pytest.mark.slow
def test_accelerate_launch_train_quickstart(tmp_path):
    """The README's main command, shortened: prepares the bundled data, trains, evaluates, saves."""
    out = tmp_path / "run"
    result = run(
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "accelerate_config.yaml",
        "scripts/train.py",
        "--config",
        "configs/quickstart.yaml",
        "--dataset_name",
        str(tmp_path / "prepared"),
        "--output_dir",
        str(out),
        "--num_train_epochs",
        "2",
        "--report_to",
        "tensorboard",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    test_results = json.loads((out / "test_results.json").read_text())
    assert all(f"test_auc_{label}" in test_results for label in LABELS), test_results
    assert test_results["test_num_labels_without_auc"] == 0
    findings = [test_results[f"test_auc_{label}"] for label in LABELS if label != NO_FINDING]
    assert all(0.0 < auc < 1.0 for auc in findings)  # a real AUC on 100+ films, never a degenerate 0 or 1
    assert test_results["test_auc_macro"] == pytest.approx(sum(findings) / 14)  # the headline: the 14 findings
    every = [test_results[f"test_auc_{label}"] for label in LABELS]
    assert test_results["test_auc_macro_15"] == pytest.approx(sum(every) / 15)  # "No Finding" too
    all_results = json.loads((out / "all_results.json").read_text())
    assert {"train_loss", "eval_auc_macro", "test_auc_macro"} <= set(all_results)
    # 2 epochs x 24 steps of 32; steps 11-48 timed, the epoch-1 evaluation and checkpoint left out
    assert all_results["train_steady_images"] == 742 * 2 - 10 * 32
    assert all_results["train_steady_images_per_second"] > all_results["train_samples_per_second"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_metric"] == pytest.approx(all_results["eval_auc_macro"])
    train_logs = [(e["epoch"], "loss" in e) for e in state["log_history"] if "epoch_auc_macro" in e]
    assert train_logs == [(1.0, True), (2.0, True)]  # the train AUC beside the epoch's loss
    assert (out / "training_curves.png").stat().st_size > 10_000
    assert tensorboard_scalars(out / "runs")["test/auc_macro"] == pytest.approx(test_results["test_auc_macro"])
    assert (out / "model.safetensors").exists() and not (out / "pytorch_model.bin").exists()
    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.problem_type == "multi_label_classification"
    assert model(pixel_values=torch.zeros(1, 3, 64, 64)).logits.shape == (1, 15)
