"""predict.py under torchrun: two processes share the files and write one merged CSV, the one a single process
writes; a killed sharded run resumes from its shard CSVs (docs/speed.md, "Many films")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import MINI_IMAGES, REPO
from inference_helpers import load_script

from cxr_vit.constants import LABELS

pytestmark = pytest.mark.no_hf_floor


def test_torchrun_shards_files_and_merges_one_csv_equal_to_a_single_process(model_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(MINI_IMAGES.glob("*.png"))[:7]:  # odd: the shares differ by one file
        shutil.copy(path, images / path.name)
    (images / "nested").mkdir()
    shutil.copy(images / sorted(os.listdir(images))[0], images / "nested" / sorted(os.listdir(images))[0])
    predict = load_script(REPO / "scripts" / "predict.py")
    single, sharded = tmp_path / "single.csv", tmp_path / "sharded.csv"
    common = ["--model", str(model_dir), "--device", "cpu", "--batch_size", "2", str(images)]
    assert predict.main([*common, "--output", str(single), "--heatmaps", str(tmp_path / "single_heatmaps")]) == 0
    # a sharded run killed after rank 0 wrote one row (and its heatmap): the resumed run predicts only the rest
    single_maps, sharded_maps = tmp_path / "single_heatmaps", tmp_path / "sharded_heatmaps"
    expected = single.read_text().replace(str(single_maps), str(sharded_maps))
    rows = expected.splitlines(keepends=True)
    (tmp_path / "sharded.shard0-of-2.csv").write_text(rows[0] + rows[1])
    sharded_maps.mkdir()
    first_map = rows[1].rstrip().rsplit(",", 1)[1]
    shutil.copy(single_maps / os.path.basename(first_map), first_map)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*launch, str(REPO / "scripts" / "predict.py"), *common, "--output", str(sharded), "--resume",
         "--heatmaps", str(sharded_maps)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote 3 predictions" in result.stdout and "wrote 4 predictions" in result.stdout  # 4 + 4, one resumed
    assert "merged 8 rows" in result.stdout
    assert sharded.read_text() == expected
    assert not list(tmp_path.glob("sharded.shard*"))  # the shard CSVs and their records are gone
    record = json.loads((tmp_path / "sharded.csv.json").read_text())  # one record of what computed the rows
    assert record["precision"] == json.loads((tmp_path / "single.csv.json").read_text())["precision"]
    # the two films that share a stem (one per process) get the names a single process gives them
    assert sorted(os.listdir(sharded_maps)) == sorted(os.listdir(single_maps))


def test_a_resumed_run_with_nothing_left_keeps_the_merged_csv(tmp_path):
    from cxr_vit.prediction import PredictionsCSV, Shard, merge_shards

    output = tmp_path / "preds.csv"
    output.write_text("path," + ",".join(LABELS) + ",positives\na.png," + ",".join(["0.500000"] * 15) + ",\n")
    before = output.read_text()
    shard = Shard(0, 2)
    for rank in range(2):  # each process of the resumed run opens its (empty) shard and predicts nothing
        PredictionsCSV(Shard(rank, 2).csv_path(output), resume=True).close()
    assert merge_shards(output, shard, order=[], resume=True) == 1
    assert output.read_text() == before
    assert not list(tmp_path.glob("preds.shard*"))
