"""Preparing straight from the release's images_*.tar.gz gives the same dataset as the extracted folder."""

from __future__ import annotations

import hashlib
import shutil
import tarfile

import pandas as pd
import pytest
from conftest import MINI_IMAGES, MINI_KAGGLE_CSV

from cxr_vit.data import ensure_prepared, prepare_dataset
from cxr_vit.data.archives import write_archives
from cxr_vit.data.nih import NIHDataError
from cxr_vit.data.prepare import StalePreparedDataError


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    names = sorted(pd.read_csv(MINI_KAGGLE_CSV)["Image Index"])
    return write_archives(MINI_IMAGES, names, tmp_path_factory.mktemp("release"), count=3)


def shard_hashes(folder):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in (folder / "data").glob("*.parquet")}


def test_archive_prepare_equals_folder_prepare(archives, prepared_mini, tmp_path):
    report = prepare_dataset(archives[0].parent, MINI_KAGGLE_CSV, tmp_path / "from_archives", num_proc=2)
    assert report.num_skipped == 0 and sum(report.split_rows.values()) == 1000
    hashes = shard_hashes(tmp_path / "from_archives")
    assert len(hashes) == 3 and hashes == shard_hashes(prepared_mini)


def test_one_archive_and_the_fingerprint_covers_the_archives(archives, tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    shutil.copy(archives[0], folder / archives[0].name)
    frame = pd.read_csv(MINI_KAGGLE_CSV, dtype=str, keep_default_na=False)
    csv = tmp_path / "labels.csv"
    with tarfile.open(archives[0]) as tar:
        inside = [name.removeprefix("images/") for name in tar.getnames()]
    frame[frame["Image Index"].isin(inside)].to_csv(csv, index=False)
    output = tmp_path / "prepared"
    assert ensure_prepared(output, archives[0], csv) is not None  # the archive itself
    assert ensure_prepared(output, folder, csv) is None  # the same archive in a folder: reused
    assert ensure_prepared(output, str(folder / "images_00[1-3].tar.gz"), csv) is None  # or matched by a pattern
    with open(folder / archives[0].name, "ab") as file:
        file.write(b"\0" * 1024)  # the archive changed size
    with pytest.raises(StalePreparedDataError, match="image files"):
        ensure_prepared(output, folder, csv)


def test_missing_mixed_and_broken_archives_are_named(archives, tmp_path):
    only_first = tmp_path / "first"
    only_first.mkdir()
    shutil.copy(archives[0], only_first / archives[0].name)
    with pytest.raises(NIHDataError, match=r"image\(s\) listed in .* are not in .*first:\n  line \d+: "):
        prepare_dataset(only_first, MINI_KAGGLE_CSV, tmp_path / "out")
    shutil.copy(MINI_IMAGES / "00000001_000.png", only_first / "00000001_000.png")
    with pytest.raises(NIHDataError, match="holds both image archives"):
        prepare_dataset(only_first, MINI_KAGGLE_CSV, tmp_path / "out2")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "images_001.tar.gz").write_bytes(archives[0].read_bytes()[:5000])
    with pytest.raises(NIHDataError, match="cannot read archive .*images_001.tar.gz.*truncated or corrupt"):
        prepare_dataset(broken, MINI_KAGGLE_CSV, tmp_path / "out3", on_bad_image="skip")


def test_archive_prepare_benchmark_measures_both_sources():
    from cxr_vit.benchmarks.archive_prepare import format_rows, measure_archive_prepare

    rows = measure_archive_prepare(
        MINI_KAGGLE_CSV, 40, num_archives=2, image_size=64, num_proc=(1,), synthetic_size=256
    )
    assert [row["source"] for row in rows] == ["extracted folder", "2 archives"]
    for row in rows:
        assert row["images_per_s"] > 0 and row["cpu_s_per_image"] > 0
        assert 0 < row["output_bytes_per_image"] < row["input_bytes_per_image"] / 4  # 256 px films shrunk to 64
    assert rows[0]["output_bytes_per_image"] == rows[1]["output_bytes_per_image"]  # the same Parquet
    assert format_rows(rows).count("\n") == 3
