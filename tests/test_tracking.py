"""Experiment tracking: ``train.py --report_to trackio`` logs the run name, its config and the final test metrics.

trackio keeps runs in a local SQLite store under ``TRACKIO_DIR``; the run here writes to a temporary one and is
read back with trackio's own reader in a second process (trackio fixes its folder when it is imported). Nothing
reaches the Hub: no Space is named, and local logging starts no server.
"""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

pytest.importorskip("trackio", reason="the tracking extra: pip install -e '.[tracking]'")
pytestmark = pytest.mark.slow

# Reads every run of a project from the store: its name, config and last logged value of each metric.
READ_STORE = """
import json, sys
import trackio
from trackio.sqlite_storage import SQLiteStorage

project = sys.argv[1]
runs = {}
for run in trackio.Api().runs(project):
    last = {}
    for entry in SQLiteStorage.get_logs(project, run.name):
        last.update({key: value for key, value in entry.items() if key not in ("step", "timestamp")})
    runs[run.name] = {"config": run.config, "metrics": last}
print(json.dumps({"projects": SQLiteStorage.get_projects(), "runs": runs}, default=str))
"""


def test_trackio_logs_the_run_name_config_and_final_test_metrics(tmp_path, prepared_mini):
    remote = ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_BUCKET_ID", "TRACKIO_DATASET_ID")  # log locally
    env = {key: value for key, value in os.environ.items() if key not in remote}
    env.update(TRACKIO_DIR=str(tmp_path / "trackio"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model_kwargs": {"depth": 1}}))
    output = tmp_path / "run"
    command = [sys.executable, "scripts/train.py", "--config", str(config), "--dataset_name", str(prepared_mini),
               "--model_name", "vit_tiny_patch16_224", "--pretrained", "false", "--image_size", "32",
               "--output_dir", str(output), "--image_cache_dir", str(tmp_path / "cache"), "--max_train_samples", "32",
               "--max_eval_samples", "32", "--num_train_epochs", "1", "--per_device_train_batch_size", "16",
               "--learning_rate", "0.001", "--report_to", "trackio"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    read = subprocess.run([sys.executable, "-c", READ_STORE, "cxr-vit"], env=env, capture_output=True, text=True)
    assert read.returncode == 0, read.stderr[-3000:]
    store = json.loads(read.stdout.strip().splitlines()[-1])
    assert store["projects"] == ["cxr-vit"]
    # One run, named after the output folder: the evaluations after training rejoin it instead of starting another.
    (name, run), *others = store["runs"].items()
    assert not others, list(store["runs"])
    assert name.startswith("run-") and run["config"]["run_name"] == name
    assert run["config"]["learning_rate"] == 0.001 and run["config"]["num_train_epochs"] == 1
    assert run["config"]["architecture"] == "vit_tiny_patch16_224"
    assert run["config"]["model/num_parameters"] > 0

    test_results = json.loads((output / "test_results.json").read_text())
    logged = {key.removeprefix("test/"): value for key, value in run["metrics"].items() if key.startswith("test/")}
    expected = {key.removeprefix("test_"): value for key, value in test_results.items() if key.startswith("test_")}
    assert "auc_macro" in logged and len(logged) > 15
    assert logged == pytest.approx({key: expected[key] for key in logged})
    assert set(expected) - set(logged) == {"samples"}  # the count train.py adds to the file, not a logged metric
    eval_results = json.loads((output / "eval_results.json").read_text())
    assert run["metrics"]["eval/auc_macro"] == pytest.approx(eval_results["eval_auc_macro"])
