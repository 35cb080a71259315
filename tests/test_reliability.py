"""Reliability: resume after a kill, half-written checkpoints, NaN losses, multi-process metrics, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import MINI_IMAGES, REPO
from PIL import Image
from safetensors.torch import save_file
from training_helpers import ToyLinear, toy_args, toy_rows

from cxr_vit.data import NIHDataError, build_dataset, prepare_dataset
from cxr_vit.training import MultiLabelTrainer
from cxr_vit.training.checkpoints import (
    CheckpointError,
    checkpoint_problem,
    find_resumable_checkpoint,
    resolve_resume_checkpoint,
)

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def fake_checkpoint(root: Path, step: int) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))
    for name in ("config.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (path / name).write_bytes(b"{}")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda p: (p / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda p: (p / "trainer_state.json").write_text('{"global_st'), "trainer_state.json is unreadable"),
        (lambda p: (p / "optimizer.pt").write_bytes(b""), "optimizer.pt is missing or empty"),
        (lambda p: (p / "rng_state.pth").unlink(), "no rng_state"),
        (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:40]),
         "model.safetensors is unreadable"),
    ],
)  # fmt: skip
def test_half_written_checkpoint_is_skipped_with_a_message(tmp_path, caplog, damage, problem):
    good = fake_checkpoint(tmp_path, 10)
    newest = fake_checkpoint(tmp_path, 20)
    assert checkpoint_problem(newest) is None
    damage(newest)
    assert problem in checkpoint_problem(newest)
    assert find_resumable_checkpoint(tmp_path) == str(good)
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-20" in caplog.text
    with pytest.raises(CheckpointError, match="cannot resume from .*checkpoint-20"):
        resolve_resume_checkpoint(str(newest), tmp_path)
    assert resolve_resume_checkpoint("auto", tmp_path) == str(good)
    assert resolve_resume_checkpoint(None, tmp_path) is None
    assert resolve_resume_checkpoint("auto", tmp_path / "nothing-here") is None


def test_non_finite_loss_stops_training_before_that_model_is_saved(tmp_path):
    args = toy_args(tmp_path, per_device_train_batch_size=4, max_steps=12, save_strategy="steps", save_steps=1)
    trainer = MultiLabelTrainer(model=ToyLinear(nan_from_call=3), args=args, train_dataset=toy_rows(64))
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 3 .*before that model was"):
        trainer.train()
    saved = sorted(path.name for path in tmp_path.glob("checkpoint-*"))
    assert saved == ["checkpoint-1", "checkpoint-2"]  # the NaN step's weights were never written


def test_non_finite_loss_is_found_between_saves_within_the_check_interval(tmp_path):
    from cxr_vit.training.callbacks import NONFINITE_CHECK_STEPS

    args = toy_args(tmp_path, per_device_train_batch_size=1, max_steps=NONFINITE_CHECK_STEPS * 3, save_strategy="no")
    trainer = MultiLabelTrainer(model=ToyLinear(nan_from_call=5), args=args, train_dataset=toy_rows(64))
    with pytest.raises(FloatingPointError, match=f"at step 5 \\(now at step {NONFINITE_CHECK_STEPS},"):
        trainer.train()


def train_command(output_dir: Path, dataset_dir: Path, *extra: str, config: Path = QUICKSTART) -> list[str]:
    # With the weights' EMA: a resume must restore it too, or the final (EMA) model would differ.
    return [
        sys.executable, "scripts/train.py", "--config", str(config), "--dataset_name", str(dataset_dir),
        "--output_dir", str(output_dir), "--num_train_epochs", "3", "--report_to", "none", "--save_total_limit", "5",
        "--ema_decay", "0.99", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, prepared_mini):
    # The quickstart run with 2 of ViT-Tiny's 12 blocks: resuming does not depend on the depth; a sixth of the CPU.
    config = tmp_path / "quickstart-2-blocks.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(QUICKSTART.read_text()), "model_kwargs": {"depth": 2}}))
    reference = tmp_path / "reference"
    result = subprocess.run(train_command(reference, prepared_mini, config=config), cwd=REPO, env=ENV,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(train_command(killed, prepared_mini, config=config), cwd=REPO, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    first = killed / "checkpoint-24"  # end of epoch 1 (24 steps of 32 images)
    deadline = time.monotonic() + 300
    while not (first / "trainer_state.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    epoch_s = json.loads((reference / "train_results.json").read_text())["train_runtime"] / 3
    time.sleep(epoch_s / 3)  # into epoch 2, on a fast machine as on a loaded one
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoint-48").exists(), "the kill must land mid-epoch 2"
    fake = killed / "checkpoint-30"  # and a checkpoint half-written by the kill
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"\x00" * 10)

    result = subprocess.run(train_command(killed, prepared_mini, "--resume_from_checkpoint", "auto", config=config),
                            cwd=REPO, env=ENV, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping incomplete checkpoint" in result.stderr and "checkpoint-30" in result.stderr
    assert (killed / "checkpoint-24" / "ema.safetensors").is_file()  # checkpoints hold both weights
    resumed_state = json.loads((killed / "trainer_state.json").read_text())
    reference_state = json.loads((reference / "trainer_state.json").read_text())
    assert resumed_state["global_step"] == reference_state["global_step"] == 72
    resumed = json.loads((killed / "test_results.json").read_text())
    expected = json.loads((reference / "test_results.json").read_text())
    for key, value in expected.items():
        if "auc" in key or key == "test_loss":
            assert resumed[key] == pytest.approx(value, abs=1e-6), key


def test_symlink_out_of_the_images_folder_is_never_read(tmp_path, small_nih):
    images, csv = small_nih
    secret = tmp_path / "outside.png"
    Image.new("L", (8, 8)).save(secret)
    victim = sorted(images.iterdir())[0]
    victim.unlink()
    victim.symlink_to(secret)
    with pytest.raises(NIHDataError, match=rf"not in .*\n  line \d+: {victim.name}"):
        build_dataset(images, csv, cache_dir=tmp_path / "c")


def test_huge_image_is_decoded_and_shrunk(tmp_path, small_nih):
    images, csv = small_nih
    victim = sorted(images.iterdir())[0]
    Image.new("L", (10_000, 10_000), color=128).save(victim)  # 100 megapixels, compresses to ~100 KB
    dataset, report = build_dataset(images, csv, image_size=64, cache_dir=tmp_path / "c")
    image = next(row["image"] for split in dataset.values() for row in split if row["image_id"] == victim.name)
    assert image.size == (64, 64) and np.asarray(image).mean() == pytest.approx(128, abs=1)
    assert report.num_skipped == 0


def test_images_not_in_the_csv_are_counted(tmp_path, small_nih):
    images, csv = small_nih
    (images / "99999999_000.png").write_bytes((MINI_IMAGES / "00000001_000.png").read_bytes())
    report = prepare_dataset(images, csv, tmp_path / "out")
    assert report.num_unlisted == 1
    assert "1 image file(s) in the images folder are not listed" in (tmp_path / "out" / "README.md").read_text()


def test_train_rejects_missing_dataset_and_broken_checkpoint_clearly(tmp_path, prepared_mini):
    result = subprocess.run(train_command(tmp_path / "a", tmp_path / "no-such-dataset", "--images_dir", "",
                                          "--labels_csv", ""),
                            cwd=REPO, env=ENV, capture_output=True, text=True)  # fmt: skip
    assert result.returncode != 0 and "is neither a prepared folder nor a reachable Hub dataset" in result.stderr
    assert "Traceback" not in result.stderr
    broken = fake_checkpoint(tmp_path / "b", 5)
    (broken / "trainer_state.json").unlink()
    result = subprocess.run(train_command(tmp_path / "b", prepared_mini, "--resume_from_checkpoint", str(broken)),
                            cwd=REPO, env=ENV, capture_output=True, text=True)  # fmt: skip
    assert result.returncode != 0 and "cannot resume from" in result.stderr and "Traceback" not in result.stderr


def test_loading_is_safe():
    """Weights only as safetensors; every torch.load in our code is weights_only; no remote code."""
    sources = [p for folder in ("src", "scripts") for p in (REPO / folder).rglob("*.py")] + [REPO / "app.py"]
    for path in sources:
        if not path.exists():
            continue
        text = path.read_text()
        assert "trust_remote_code=True" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_predict_battery_names_every_bad_file_and_keeps_the_good(tmp_path, capsys):
    """Predict on zero-byte, text-named-.png and truncated files next to 16-bit, RGBA and a huge image."""
    import pandas as pd
    from inference_helpers import load_script, save_tiny_model

    model = save_tiny_model(tmp_path / "model")
    folder = tmp_path / "xrays"
    folder.mkdir()
    source = MINI_IMAGES / "00000001_000.png"
    gray = Image.open(source)
    gray.convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257).save(folder / "sixteen.png")
    Image.new("L", (10_000, 10_000), color=90).save(folder / "huge.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is a note, not an image")
    (folder / "truncated.png").write_bytes(source.read_bytes()[:300])
    output = tmp_path / "preds.csv"
    code = load_script(REPO / "scripts" / "predict.py").main(
        ["--model", str(model), str(folder), "--output", str(output)]
    )
    assert code == 1  # some files skipped
    messages = capsys.readouterr().err
    assert all(name in messages for name in ("empty.png", "text.png", "truncated.png"))
    frame = pd.read_csv(output)
    assert sorted(Path(p).name for p in frame["path"]) == ["huge.png", "rgba.png", "sixteen.png"]
    assert len(frame) + 3 == len(list(folder.iterdir()))  # the counts add up
