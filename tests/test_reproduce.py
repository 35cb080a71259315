"""scripts/reproduce.py end to end on the bundled mini set served as a small release, killed and run again; the
protocol it reports read from a run's own files, its step clock across a killed attempt, its keys and its plan."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TEST_DATA
from release_files import ReleaseServer, mini_release
from training_helpers import toy_args

import cxr_vit.release.reproduce as reproduce
from cxr_vit.metrics import compute_metrics
from cxr_vit.modeling import create_model
from cxr_vit.release.published import PUBLISHED
from cxr_vit.release.reproduce import STEPS, ReproduceArguments, Reproduction, read_protocol
from cxr_vit.step_clock import HEARTBEAT_S, StepClock
from cxr_vit.training import DataArguments, MultiLabelTrainer, save_run_args


def command(tmp_path, *extra):
    return [
        sys.executable, str(REPO / "scripts" / "reproduce.py"),
        "--data_dir", str(tmp_path / "data"),
        "--recipe", str(TEST_DATA / "recipe_tiny.yaml"),
        "--output_dir", str(tmp_path / "out"),
        "--urls", str(tmp_path / "urls.txt"),
        "--n_bootstrap", "20",
        *extra,
    ]  # fmt: skip


def arguments(tmp_path) -> ReproduceArguments:
    options = command(tmp_path)[2:]
    values = dict(zip((name.removeprefix("--") for name in options[::2]), options[1::2], strict=True))
    return ReproduceArguments(**{**values, "n_bootstrap": int(values["n_bootstrap"])})


def alive_for(tmp_path, step: str, seconds: float) -> bool:
    """Whether the running ``step``'s clock has noted it alive ``seconds`` after it started."""
    path = tmp_path / "out" / "steps" / f"{step}.attempts.json"
    if not path.is_file():
        return False
    attempt = json.loads(path.read_text())["attempts"][-1]
    return attempt["seen"] - attempt["started"] >= seconds


def markers(tmp_path) -> dict:
    steps = tmp_path / "out" / "steps"
    return {
        step: json.loads((steps / f"{step}.json").read_text()) for step in STEPS if (steps / f"{step}.json").exists()
    }


@pytest.mark.slow
def test_reproduce_killed_after_prepare_continues_and_ends_with_the_report(tmp_path, caplog):
    served = mini_release(tmp_path / "served")
    with ReleaseServer(served) as server:
        (tmp_path / "urls.txt").write_text(
            "".join(f"{p.name} {server.url(p.name)}\n" for p in sorted(served.iterdir()))
        )
        plan = Reproduction(arguments(tmp_path), REPO / "scripts", REPO / "configs").plan()
        assert "download  to run" in plan and "train     to run" in plan

        # 1. killed (SIGKILL) during training, once the step clock has noted it alive after its start
        process = subprocess.Popen(command(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while not alive_for(tmp_path, "train", HEARTBEAT_S) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait()
        before = markers(tmp_path)
        assert set(before) == {"download", "prepare"}, before
        requests = len(server.requests)

        # 2. run again (in this process: one interpreter start less): finished steps are not redone
        with caplog.at_level(logging.INFO, logger="cxr_vit.release.reproduce"):
            report_path = Reproduction(arguments(tmp_path), REPO / "scripts", REPO / "configs").run()
        assert len(server.requests) == requests  # nothing downloaded again
    after = markers(tmp_path)
    assert set(after) == set(STEPS)
    assert {step: after[step]["finished"] for step in before} == {step: m["finished"] for step, m in before.items()}
    assert "download: done before, skipped" in caplog.text and "prepare: done before, skipped" in caplog.text
    assert "train: running" in caplog.text
    killed, last = after["train"]["attempts_s"]  # the killed attempt's time counts in the step's
    assert killed >= HEARTBEAT_S and after["train"]["wall_s"] == pytest.approx(killed + last, abs=0.11)
    report = report_path.read_text()
    evaluation = json.loads((tmp_path / "out" / "evaluation" / "report.json").read_text())
    assert f"**{evaluation['auc_macro']['value']:.3f} [" in report
    state = json.loads((tmp_path / "out" / "model" / "trainer_state.json").read_text())
    ours = next(line for line in report.splitlines() if line.startswith("| cxr-vit, this run"))
    assert "| 32 px | 1 of 1 | train and `validation` (10% of the patients, seed" in ours
    assert f"best of 1 evaluation(s) on `validation` by auc_macro ({state['best_metric']:.4f}, step" in ours
    assert "The test split took no part in training or checkpoint selection" in report
    assert "| EVA-X-B, masked-image pretraining on 520k X-rays | 0.835 | 224 px | 10 |" in report
    assert "| train | " in report and "| 2 |" in report  # two attempts at training
    assert "| train |" in report and "## Per label (this run)" in report
    assert (tmp_path / "out" / "calibrated" / "model.safetensors").exists()

    # 3. everything current: a third run redoes nothing (in this process: no new imports to wait for)
    (tmp_path / "out" / "reproduction.md").unlink()
    reproduction = Reproduction(arguments(tmp_path), REPO / "scripts", REPO / "configs")
    assert all(reproduction.is_done(step) for step in STEPS)
    assert reproduction.run().read_text() == report
    assert markers(tmp_path) == after
    plan = reproduction.plan()
    assert "done, skipped" in plan
    measured = json.loads((tmp_path / "out" / "model" / "train_results.json").read_text()).get(
        "train_steady_images_per_second"
    )
    if measured:  # the tiny run measures its own throughput once it has more steps than the warm-up skips
        assert f"at the {measured:,.0f} images/s this folder's last training measured" in plan


def test_the_protocol_is_read_from_the_run(tmp_path, prepared_mini):
    """What reproduction.md says of checkpoint selection comes from the run, not from fixed text: a run with
    load_best_model_at_end false is reported as its final weights."""
    protocols = {}
    for best in (True, False):
        model_dir = tmp_path / f"best_{best}"
        args = toy_args(
            model_dir, num_train_epochs=2, per_device_train_batch_size=16, eval_strategy="epoch", save_strategy="epoch",
            load_best_model_at_end=best, metric_for_best_model="auc_macro",
        )  # fmt: skip
        torch.manual_seed(0)  # a one-block ViT on 16 px noise: a real model, saved as train.py saves one, in seconds
        model = create_model("vit_tiny_patch16_224", pretrained=False, image_size=16, model_kwargs={"depth": 1})
        rows = [{"pixel_values": torch.randn(3, 16, 16), "labels": (torch.rand(15) < 0.5).float()} for _ in range(16)]
        trainer = MultiLabelTrainer(
            model=model, args=args, train_dataset=rows, eval_dataset=rows, compute_metrics=compute_metrics
        )
        trainer.train()
        trainer.save_model()
        trainer.save_state()  # as train.py does, before its closing test evaluation
        save_run_args(model_dir / "run_args.yaml", args, DataArguments())
        protocols[best] = read_protocol(model_dir, prepared_mini)
    state = json.loads((tmp_path / "best_True" / "trainer_state.json").read_text())
    best = protocols[True]
    assert (best.resolution, best.epochs) == ("16 px", "2 of 2")
    assert best.selection == (
        f"best of 2 evaluation(s) on `validation` by auc_macro ({state['best_metric']:.4f}, step "
        f"{state['best_global_step']} of 2)"
    )
    assert best.split.startswith("patient-wise random split, seed ")
    assert best.test_use.startswith("The test split took no part in training or checkpoint selection")
    assert protocols[False].selection == "the final weights (step 2): load_best_model_at_end false, no selection"
    missing = read_protocol(tmp_path / "nothing")
    assert missing.selection == "not recorded (run_args.yaml missing)" and missing.split.startswith("not recorded")


def test_published_rows_state_resolution_epochs_and_split():
    for row in PUBLISHED:
        assert row.resolution and row.epochs and row.split, row
    eva = next(row for row in PUBLISHED if row.model.startswith("EVA-X-B"))
    assert (eva.resolution, eva.epochs) == ("224 px", "10") and "official test list" in eva.split


def test_a_killed_attempt_counts_in_the_steps_time(tmp_path):
    path = tmp_path / "train.attempts.json"
    script = (
        "import sys, time\nfrom cxr_vit.step_clock import StepClock\n"
        "with StepClock(sys.argv[1], 'key', heartbeat_s=0.1):\n    print('started', flush=True)\n    time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "started\n"
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)  # no chance to note its end
    process.wait()
    clock = StepClock(path, "key", heartbeat_s=0.1)
    (killed,) = clock.earlier
    assert 0.6 <= killed <= 1.6  # to its last heartbeat, 0.1 s apart (on a loaded machine, a little more)
    with clock:
        time.sleep(0.3)
    assert clock.attempts_s[0] == killed and 0.3 <= clock.attempts_s[1] < 1.0
    assert StepClock(path, "other key").earlier == []  # other inputs: their attempts are not this step's


def test_a_step_key_covers_the_package_version(tmp_path, monkeypatch):
    (tmp_path / "urls.txt").write_text("test_list.txt http://127.0.0.1:9/test_list.txt\n")
    key = Reproduction(arguments(tmp_path), REPO / "scripts", REPO / "configs").step_key("download")
    monkeypatch.setattr(reproduce, "__version__", "99.0")
    assert Reproduction(arguments(tmp_path), REPO / "scripts", REPO / "configs").step_key("download") != key


def test_the_plan_prints_only_figures_this_package_measured_or_computed(tmp_path):
    plan = Reproduction(arguments(tmp_path), REPO / "scripts", REPO / "configs").plan()
    lines = {line.split()[0]: line for line in plan.splitlines()[1:]}
    assert "measured by scripts/benchmark_archive_prepare.py" in lines["prepare"]
    assert "time not estimated: this package has no measured training throughput" in lines["train"]
    assert "1 epochs x 77,872 training images (computed" in lines["train"]
    assert "computed: weights + AdamW state" in lines["train"]
    assert lines["download"].endswith("disk not known before the files arrive (NIH publishes no sizes); the archives "
                                      "stay packed; time network-bound, not estimated")  # fmt: skip
    assert "H200" not in plan and "2885" not in plan and "2,885" not in plan
