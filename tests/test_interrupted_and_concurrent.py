"""Preparation and cache building when runs overlap or die: a shared disk, a job array, a SIGKILL half-way.

Two runs at once prepare (or cache) once: the second waits on the lock and reuses. A run killed half-way leaves
nothing that is read: the next run notices and rebuilds.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from conftest import MINI_IMAGES, MINI_KAGGLE_CSV, REPO

from cxr_vit.data import NIHDataError, ensure_prepared, load_chestxray14, load_dataset_as_is
from cxr_vit.data.cache import IMAGES_FILE, ensure_cache, read_meta
from cxr_vit.data.locking import exclusive
from cxr_vit.data.prepare import LOCK_FILE
from cxr_vit.data.provenance import PREPARE_RECORD, PREPARING_MARKER
from cxr_vit.data.transforms import EvalGeometry

CACHE_SCRIPT = """
import logging, sys
import datasets
from cxr_vit.data.cache import ensure_cache
from cxr_vit.data.transforms import EvalGeometry
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
split = datasets.load_dataset(sys.argv[1])[sys.argv[2]]
ensure_cache(split, sys.argv[3], EvalGeometry(int(sys.argv[4]), int(sys.argv[4]), "bicubic"))
"""


def start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def prepare_command(images, csv, output) -> list[str]:
    return [sys.executable, "scripts/prepare_data.py", "--images_dir", str(images), "--labels_csv", str(csv),
            "--output_dir", str(output)]  # fmt: skip


def content_digest(folder: Path) -> dict[str, str]:
    """Per split: a digest of every row (ids, labels and image bytes) of a prepared folder."""
    splits = load_dataset_as_is(str(folder))  # as it is on disk (tests/test_stale_reads.py)
    digests = {}
    for name, split in splits.items():
        raw = split.cast_column("image", datasets.Image(decode=False))
        digest = hashlib.sha256()
        for row in raw:
            digest.update(row["image_id"].encode() + repr(row["labels"]).encode() + row["image"]["bytes"])
        digests[name] = digest.hexdigest()
    return digests


def run_held(lock: Path, what: str, commands: list[list[str]], logs: list[Path]) -> list[str]:
    """Start ``commands`` while this test holds ``lock``, release it once each says it waits; their outputs."""
    with exclusive(lock, what):
        processes = [start(command, log) for command, log in zip(commands, logs, strict=True)]
        for log in logs:
            wait_for(lambda log=log: "waiting: another process is" in log.read_text(), f"{log.name} to wait")
    for process in processes:
        assert process.wait(timeout=300) == 0, [log.read_text()[-3000:] for log in logs]
    return [log.read_text() for log in logs]


def test_two_preparations_at_once_prepare_once_and_both_succeed(small_nih, tmp_path):
    images, csv = small_nih
    output = tmp_path / "prepared"
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    outputs = run_held(output / LOCK_FILE, "a test", [prepare_command(images, csv, output)] * 2, logs)
    assert sum(f"wrote {output}" in text for text in outputs) == 1  # one prepared ...
    assert sum("is up to date" in text for text in outputs) == 1  # ... the other waited and reused it
    assert not (output / PREPARING_MARKER).exists() and (output / PREPARE_RECORD).is_file()
    assert sum(len(split) for split in load_chestxray14(str(output)).values()) == len(datasets.load_dataset(
        "csv", data_files=str(csv))["train"])  # fmt: skip


def test_a_killed_preparation_is_never_read_and_the_next_run_rebuilds_it(prepared_mini, tmp_path):
    output = tmp_path / "prepared"
    process = start(prepare_command(MINI_IMAGES, MINI_KAGGLE_CSV, output), tmp_path / "killed.log")
    wait_for(lambda: (output / PREPARING_MARKER).is_file() or process.poll() is not None, "the preparation to start")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (output / PREPARING_MARKER).is_file() and not (output / PREPARE_RECORD).exists()
    # whatever a killed run left (a shard half written, a card) is not a dataset
    (output / "data").mkdir(exist_ok=True)
    (output / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 half a shard")
    (output / "README.md").write_text("---\n---\n")
    with pytest.raises(NIHDataError, match="only partly prepared.*interrupted or is still running"):
        load_chestxray14(str(output))

    again = subprocess.run(prepare_command(MINI_IMAGES, MINI_KAGGLE_CSV, output), cwd=REPO, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "unfinished preparation" in again.stderr and "rebuilding it" in again.stderr
    assert not (output / PREPARING_MARKER).exists()
    assert content_digest(output) == content_digest(prepared_mini)  # the same as a preparation never killed


def test_an_interrupted_folder_is_rebuilt_by_ensure_prepared_without_overwrite(small_nih, tmp_path):
    images, csv = small_nih
    output = tmp_path / "prepared"
    ensure_prepared(output, images, csv)
    (output / PREPARING_MARKER).write_text("{")  # killed while marking a re-preparation (--overwrite_prepared)
    with pytest.raises(NIHDataError, match="only partly prepared"):
        load_chestxray14(str(output))
    assert ensure_prepared(output, images, csv) is not None  # rebuilt, not reused and not refused as stale
    assert not (output / PREPARING_MARKER).exists()
    load_chestxray14(str(output))


def cache_command(prepared: Path, split: str, directory: Path, side: int) -> list[str]:
    return [sys.executable, "-c", CACHE_SCRIPT, str(prepared), split, str(directory), str(side)]


def test_two_cache_builds_at_once_build_once(prepared_mini, tmp_path):
    directory = tmp_path / "cache" / "validation-40px-bicubic"
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    command = cache_command(prepared_mini, "validation", directory, 40)
    outputs = run_held(directory.with_name(f"{directory.name}.lock"), "a test", [command] * 2, logs)
    assert sum("cxr_vit.data.cache: building the image cache" in text for text in outputs) == 1, outputs
    assert sum("using the image cache" in text for text in outputs) == 1
    assert read_meta(directory)["num_rows"] == len(datasets.load_dataset(str(prepared_mini))["validation"])


def test_a_killed_cache_build_leaves_nothing_to_read_and_is_rebuilt(prepared_mini, tmp_path, caplog):
    directory = tmp_path / "cache" / "train-448px-bicubic"
    process = start(cache_command(prepared_mini, "train", directory, 448), tmp_path / "killed.log")
    staging = lambda: list(directory.parent.glob(f"{directory.name}.tmp-*"))  # noqa: E731
    wait_for(lambda: bool(staging()) or process.poll() is not None, "the cache build to start")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert staging() and not directory.exists()  # the half-built cache never sits where it is read

    train = datasets.load_dataset(str(prepared_mini))["train"]
    with caplog.at_level("WARNING", logger="cxr_vit.data.cache"):
        ensure_cache(train, directory, EvalGeometry(448, 448, "bicubic"))
    assert "an image cache build that was interrupted" in caplog.text
    assert not staging() and read_meta(directory)["num_rows"] == len(train)
    assert (directory / IMAGES_FILE).stat().st_size >= len(train) * 448 * 448
