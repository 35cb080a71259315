"""A prepared folder is read as it is on disk, whatever datasets' cache holds from earlier folders or runs.

datasets keys its Arrow copy of a folder with a ``configs:`` README by the folder's name and README YAML only, so
each stale case below needs data with the same split counts and bytes: labels or films swapped between two films
of one patient (the patient-wise split, which sums each patient's labels, stays the same). Every second read
here runs with the cache the first one filled.
"""

import hashlib
import itertools
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import SESSION_CACHES

from cxr_vit.data import NIHDataError, build_dataset, ensure_prepared, load_chestxray14
from cxr_vit.data.cache import ensure_cache
from cxr_vit.data.cached_dataset import CachedImageDataset
from cxr_vit.data.transforms import EvalGeometry


def swap_labels_within_a_patient(csv: Path) -> tuple[str, str]:
    """Swap the label strings of two films of one patient (as many labels each, not equal); their names."""
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    for _, films in frame.groupby("Patient ID", sort=False):
        for a, b in itertools.combinations(films.index, 2):
            first, second = frame.at[a, "Finding Labels"], frame.at[b, "Finding Labels"]
            if first != second and first.count("|") == second.count("|"):
                frame.loc[[a, b], "Finding Labels"] = [second, first]
                frame.to_csv(csv, index=False)
                return frame.at[a, "Image Index"], frame.at[b, "Image Index"]
    raise AssertionError(f"no patient in {csv} has two films with different labels")


def on_disk(folder: Path) -> dict[str, tuple]:
    """What the folder's Parquet holds, read by pyarrow: image id -> (labels, SHA-256 of the image bytes)."""
    rows = {}
    for shard in sorted((folder / "data").glob("*.parquet")):
        for row in pq.read_table(shard, columns=["image_id", "labels", "image"]).to_pylist():
            rows[row["image_id"]] = (tuple(row["labels"]), hashlib.sha256(row["image"]["bytes"]).hexdigest())
    return rows


def read(folder: Path) -> dict[str, tuple]:
    """The same, as the package reads it (load_chestxray14, which training and the scripts use)."""
    rows = {}
    for split in load_chestxray14(str(folder)).values():
        raw = split.cast_column("image", datasets.Image(decode=False))
        for row in raw.select_columns(["image_id", "labels", "image"]):
            rows[row["image_id"]] = (tuple(row["labels"]), hashlib.sha256(row["image"]["bytes"]).hexdigest())
    return rows


def test_a_folder_prepared_again_in_place_is_read_as_it_is_now(small_nih, tmp_path):
    images, csv = small_nih
    output = tmp_path / "prepared"
    ensure_prepared(output, images, csv)
    before = read(output)
    a, b = swap_labels_within_a_patient(csv)  # a corrected label list
    ensure_prepared(output, images, csv, overwrite=True)
    assert on_disk(output)[a][0] == before[b][0]
    assert read(output) == on_disk(output)
    assert read(output) == on_disk(output)  # and again, from the cache the read before filled


def test_folders_of_one_name_and_one_copied_over_another_are_each_read_as_they_are(small_nih, tmp_path):
    images, csv = small_nih
    first, second = tmp_path / "first" / "prepared", tmp_path / "second" / "prepared"
    ensure_prepared(first, images, csv)
    assert read(first) == on_disk(first)
    swap_labels_within_a_patient(csv)
    ensure_prepared(second, images, csv)
    assert on_disk(second) != on_disk(first)
    assert read(second) == on_disk(second)  # another folder of the same name (a temporary path that repeats)
    shutil.rmtree(first)
    shutil.copytree(second, first)  # copied over, with its files' times
    assert read(first) == on_disk(second)


def test_a_shard_that_is_not_the_one_prepared_is_an_error_naming_it(small_nih, tmp_path):
    images, csv = small_nih
    output = tmp_path / "prepared"
    ensure_prepared(output, images, csv)
    (shard,) = (output / "data").glob("validation-*.parquet")
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, table.num_rows - 1), shard)  # e.g. a sync that replaced one file
    with pytest.raises(NIHDataError, match=rf"{shard.name} is not the file .*prepare.json describes"):
        load_chestxray14(str(output))


def test_an_image_cache_follows_the_films_of_a_folder_prepared_again(small_nih, tmp_path):
    images, csv = small_nih
    output = tmp_path / "prepared"
    ensure_prepared(output, images, csv)
    train = load_chestxray14(str(output))["train"]
    frame = pd.DataFrame({"image_id": train["image_id"], "patient": train["patient_id"]})
    frame["size"] = [(images / name).stat().st_size for name in frame["image_id"]]
    a, b = next(
        (films.iloc[0], films.iloc[1])
        for _, films in frame.groupby("patient")
        if len(films) > 1 and films["size"].iloc[0] != films["size"].iloc[1]
    )
    geometry = EvalGeometry(32, 35, "bicubic")
    directory = tmp_path / "image-cache"
    old = np.array(CachedImageDataset(ensure_cache(train, directory, geometry)).images)
    os.rename(images / a.image_id, tmp_path / "swap.png")  # two films of one patient swapped
    os.rename(images / b.image_id, images / a.image_id)
    os.rename(tmp_path / "swap.png", images / b.image_id)
    ensure_prepared(output, images, csv, overwrite=True)
    train = load_chestxray14(str(output))["train"]
    new = np.array(CachedImageDataset(ensure_cache(train, directory, geometry)).images)
    assert (new[a.name] == old[b.name]).all() and (new[b.name] == old[a.name]).all()
    assert not (new[a.name] == old[a.name]).all()


def built_labels(images: Path, csv: Path) -> dict[str, tuple]:
    """Image id -> labels of build_dataset's splits, built in the default cache (HF_DATASETS_CACHE)."""
    built, _ = build_dataset(images, csv)
    pairs = (zip(split["image_id"], split["labels"], strict=True) for split in built.values())
    return {name: tuple(labels) for split in pairs for name, labels in split}


def test_the_builder_cache_follows_a_label_csv_corrected_in_place(small_nih):
    images, csv = small_nih
    before = built_labels(images, csv)
    a, b = swap_labels_within_a_patient(csv)
    after = built_labels(images, csv)
    assert after[a] == before[b] and after[b] == before[a]
    assert built_labels(images, csv) == after  # from the warm cache


def test_the_suite_runs_on_empty_caches_of_its_own():
    from huggingface_hub import constants

    assert Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(SESSION_CACHES)
    assert Path(constants.HF_HUB_CACHE).is_relative_to(SESSION_CACHES)
    assert Path(os.environ["CXR_VIT_CACHE"]).is_relative_to(SESSION_CACHES)
