"""scripts/reproduce.py end to end on the bundled mini set served as a small release, killed and run again."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, TEST_DATA
from release_files import ReleaseServer, mini_release

from cxr_vit.release.reproduce import STEPS, ReproduceArguments, Reproduction


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

        # 1. killed (SIGKILL) as soon as the prepare step's marker appears, i.e. during training
        process = subprocess.Popen(command(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while "prepare" not in markers(tmp_path) and process.poll() is None and time.monotonic() < deadline:
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
    report = report_path.read_text()
    evaluation = json.loads((tmp_path / "out" / "evaluation" / "report.json").read_text())
    assert f"**{evaluation['auc_macro']['value']:.3f} [" in report
    assert "| EVA-X-B, masked-image pretraining on 520k X-rays | 0.835 |" in report
    assert "| train |" in report and "## Per label (this run)" in report
    assert (tmp_path / "out" / "calibrated" / "model.safetensors").exists()

    # 3. everything current: a third run redoes nothing (in this process: no new imports to wait for)
    (tmp_path / "out" / "reproduction.md").unlink()
    reproduction = Reproduction(arguments(tmp_path), REPO / "scripts", REPO / "configs")
    assert all(reproduction.is_done(step) for step in STEPS)
    assert reproduction.run().read_text() == report
    assert markers(tmp_path) == after
    assert "done, skipped" in reproduction.plan()
