"""Prepared folders carry what made them: reused only when inputs and settings match, never silently stale."""

import json
import logging
import subprocess
import sys

import datasets
import pandas as pd
import pytest
from conftest import MINI_IMAGES, MINI_KAGGLE_CSV, REPO
from PIL import Image

from cxr_vit.data import StalePreparedDataError, ensure_prepared
from cxr_vit.training import CXRTrainingArguments, DataArguments
from cxr_vit.training.inputs import load_splits


def prepared_ids(folder) -> dict[str, list[str]]:
    dataset = datasets.load_dataset(str(folder))
    return {split: sorted(dataset[split]["image_id"]) for split in dataset}


def test_a_folder_is_reused_only_while_inputs_and_settings_match(small_nih, tmp_path):
    images, csv = small_nih
    out = tmp_path / "prepared"
    assert ensure_prepared(out, images, csv) is not None  # prepared
    record = json.loads((out / "prepare.json").read_text())
    assert record["parameters"]["split_seed"] == 42 and len(record["inputs"]["labels_csv"]["sha256"]) == 64
    assert record["inputs"]["images"]["count"] == len(list(images.iterdir()))
    assert ensure_prepared(out, images, csv) is None  # the same inputs and settings: reused

    changes = {
        "image_size None -> 32": {"image_size": 32},
        "split_seed 42 -> 7": {"split_seed": 7},
        "validation_fraction 0.1 -> 0.2": {"validation_fraction": 0.2},
    }
    for message, settings in changes.items():
        with pytest.raises(StalePreparedDataError, match=message):
            ensure_prepared(out, images, csv, **settings)

    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame.loc[0, "Finding Labels"] = "Hernia" if frame.loc[0, "Finding Labels"] != "Hernia" else "Mass"
    frame.to_csv(csv, index=False)  # the same file name, another label
    with pytest.raises(StalePreparedDataError, match=r"labels_csv content \(labels.csv sha256 [0-9a-f]{12} ->"):
        ensure_prepared(out, images, csv)
    victim = sorted(images.iterdir())[0]
    Image.new("L", (80, 80)).save(victim)  # an image replaced by another file
    with pytest.raises(StalePreparedDataError, match="image files") as error:
        ensure_prepared(out, images, csv)
    assert "\n" not in str(error.value) and "--overwrite_prepared" in str(error.value)  # one line that says how


def test_overwrite_rebuilds_the_folder_and_its_caches(small_nih, tmp_path):
    images, csv = small_nih
    out = tmp_path / "prepared"
    ensure_prepared(out, images, csv)
    (out / "cache" / "train-71px-bicubic").mkdir(parents=True)
    report = ensure_prepared(out, images, csv, overwrite=True, split_seed=3)
    assert report is not None and not (out / "cache").exists()
    assert json.loads((out / "prepare.json").read_text())["parameters"]["split_seed"] == 3
    assert "Split seed 3" in (out / "README.md").read_text()  # the card states the split seed
    assert ensure_prepared(out, images, csv, split_seed=3) is None


def test_a_folder_without_a_record_is_not_trusted(small_nih, tmp_path):
    images, csv = small_nih
    out = tmp_path / "by-hand"
    out.mkdir()
    (out / "README.md").write_text("---\n---\nsomething prepared elsewhere\n")
    with pytest.raises(StalePreparedDataError, match="has no prepare.json"):
        ensure_prepared(out, images, csv)


def test_prepare_script_says_up_to_date_stale_or_rebuilt(small_nih, tmp_path):
    images, csv = small_nih
    out = tmp_path / "prepared"
    base = [sys.executable, "scripts/prepare_data.py", "--images_dir", str(images), "--labels_csv", str(csv),
            "--output_dir", str(out)]  # fmt: skip

    def prepare(*extra):
        return subprocess.run([*base, *extra], cwd=REPO, capture_output=True, text=True, timeout=300)

    assert prepare().returncode == 0
    again = prepare()
    assert again.returncode == 0 and "is up to date" in again.stdout
    stale = prepare("--split_seed", "1")
    assert stale.returncode == 2 and "split_seed 42 -> 1" in stale.stderr and "Traceback" not in stale.stderr
    assert len(stale.stderr.strip().splitlines()) == 1
    rebuilt = prepare("--split_seed", "1", "--overwrite_prepared")
    assert rebuilt.returncode == 0 and "wrote" in rebuilt.stdout


def test_the_split_does_not_follow_the_training_seed(tmp_path):
    """train.py prepares with --split_seed, never --seed: a seed study trains every seed on the same split."""
    images, csv = MINI_IMAGES, MINI_KAGGLE_CSV
    splits = {}
    for seed in (1, 2):
        data_args = DataArguments(dataset_name=str(tmp_path / f"seed{seed}"), images_dir=str(images),
                                  labels_csv=str(csv))  # fmt: skip
        training_args = CXRTrainingArguments(output_dir=str(tmp_path / "out"), seed=seed, report_to="none")
        load_splits(data_args, training_args)
        splits[seed] = prepared_ids(tmp_path / f"seed{seed}")
    assert splits[1] == splits[2]
    other = DataArguments(dataset_name=str(tmp_path / "split7"), images_dir=str(images), labels_csv=str(csv),
                          split_seed=7)  # fmt: skip
    load_splits(other, training_args)
    assert prepared_ids(tmp_path / "split7") != splits[1]


def test_labels_without_positives_are_named_at_prepare_train_and_in_the_card(small_nih, tmp_path, caplog):
    images, csv = small_nih  # 12 patients: several findings cannot have a positive in every split
    out = tmp_path / "prepared"
    with caplog.at_level(logging.WARNING):
        report = ensure_prepared(out, images, csv)
    assert report.labels_without_positives
    label, counts = next(iter(report.labels_without_positives.items()))
    assert 0 in counts.values() and set(counts) == {"train", "validation", "test"}
    named = f"{label} (train {counts['train']}, validation {counts['validation']}, test {counts['test']})"
    assert named in caplog.text
    assert "Labels without a positive image in some split" in (out / "README.md").read_text()
    assert named in (out / "README.md").read_text()

    caplog.clear()
    data_args = DataArguments(dataset_name=str(out))
    with caplog.at_level(logging.WARNING):
        load_splits(data_args, CXRTrainingArguments(output_dir=str(tmp_path / "o"), report_to="none"))
    assert "labels without a positive image in some split" in caplog.text
    assert f"{label} (train {counts['train']}, eval {counts['validation']}, test {counts['test']})" in caplog.text


def test_train_script_prepares_the_official_split_from_its_lists(small_nih, tmp_path):
    images, csv = small_nih
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    test_patients = frame["Patient ID"].drop_duplicates().head(3)
    test_names = sorted(frame[frame["Patient ID"].isin(test_patients)]["Image Index"])
    (tmp_path / "test_list.txt").write_text("\n".join(test_names))
    (tmp_path / "train_val_list.txt").write_text("\n".join(sorted(set(frame["Image Index"]) - set(test_names))))
    data_args = DataArguments(dataset_name=str(tmp_path / "official"), images_dir=str(images), labels_csv=str(csv),
                              prepare_config="full", train_val_list=str(tmp_path / "train_val_list.txt"),
                              test_list=str(tmp_path / "test_list.txt"))  # fmt: skip
    training_args = CXRTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none")
    splits = load_splits(data_args, training_args)
    assert sorted(splits["test"]["image_id"]) == test_names
    record = json.loads((tmp_path / "official" / "prepare.json").read_text())
    assert record["parameters"]["config"] == "full" and record["inputs"]["test_list"]["sha256"]
