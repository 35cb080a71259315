"""The datasets builder and the prepared folder, on the bundled real NIH files."""

import shutil

import datasets
import numpy as np
import pandas as pd
import pytest
from conftest import MINI_FULL_CSV, MINI_IMAGES, MINI_KAGGLE_CSV, TEST_DATA
from PIL import Image

from cxr_vit.constants import LABELS
from cxr_vit.data import NIHDataError, build_dataset, nih_features, prepare_dataset


def test_prepared_folder_loads_with_all_features(prepared_mini):
    dataset = datasets.load_dataset(str(prepared_mini))
    assert set(dataset) == {"train", "validation", "test"}
    assert dataset["train"].features == nih_features()
    assert dataset["train"].features["findings"].feature.names == list(LABELS)
    example = dataset["train"][0]
    assert isinstance(example["image"], Image.Image) and example["image"].mode == "L"
    assert len(example["labels"]) == 15
    assert sum(dataset[s].num_rows for s in dataset) == 1000


def test_per_label_counts_equal_the_csv(prepared_mini):
    dataset = datasets.load_dataset(str(prepared_mini))
    counts = sum(np.asarray(dataset[s]["labels"]).sum(0) for s in dataset)
    raw = pd.read_csv(MINI_KAGGLE_CSV)["Finding Labels"].str.split("|")
    expected = [raw.apply(lambda names, lab=lab: lab in names).sum() for lab in LABELS]
    assert counts.astype(int).tolist() == expected


def test_splits_are_patient_disjoint_and_test_has_every_label(prepared_mini):
    dataset = datasets.load_dataset(str(prepared_mini))
    patients = {s: set(dataset[s]["patient_id"]) for s in dataset}
    assert not patients["train"] & patients["validation"]
    assert not patients["train"] & patients["test"]
    assert not patients["validation"] & patients["test"]
    assert (np.asarray(dataset["test"]["labels"]).sum(0) > 0).all()


def test_card_reports_counts_and_split_method(prepared_mini):
    card = (prepared_mini / "README.md").read_text()
    assert "dataset_info:" in card and "configs:" in card
    assert "| Hernia |" in card and "patient-wise" in card
    assert "1000 rows in `sample_labels.csv`; 1000 images written" in card
    assert "No image was skipped." in card


def test_both_csv_formats_and_seeds(tmp_path, small_nih):
    images, _ = small_nih
    names = {p.name for p in images.iterdir()}
    full = pd.read_csv(MINI_FULL_CSV, dtype=str, keep_default_na=False)
    full_csv = tmp_path / "Data_Entry_2017_v2020.csv"
    full[full["Image Index"].isin(names)].to_csv(full_csv, index=False)
    kaggle_csv = small_nih[1]
    a, _ = build_dataset(images, kaggle_csv, cache_dir=tmp_path / "a")
    b, _ = build_dataset(images, full_csv, config="full", cache_dir=tmp_path / "b")
    for split in a:
        drop = ["image"]
        assert a[split].remove_columns(drop).to_list() == b[split].remove_columns(drop).to_list()


def test_split_seed_changes_the_split(tmp_path, prepared_mini):
    default = datasets.load_dataset(str(prepared_mini))
    other, _ = build_dataset(MINI_IMAGES, MINI_KAGGLE_CSV, split_seed=1, cache_dir=tmp_path)
    assert set(default["test"]["patient_id"]) != set(other["test"]["patient_id"])


def test_deterministic(tmp_path, small_nih):
    first, _ = build_dataset(*small_nih, cache_dir=tmp_path / "1")
    second, _ = build_dataset(*small_nih, cache_dir=tmp_path / "2")
    for split in first:
        assert first[split]["image_id"] == second[split]["image_id"]
        assert first[split][0]["image"].tobytes() == second[split][0]["image"].tobytes()


def test_missing_image_errors_with_name_and_line(tmp_path, small_nih):
    images, csv = small_nih
    victim = sorted(images.iterdir())[3]
    victim.unlink()
    with pytest.raises(NIHDataError, match=rf"1 image\(s\) listed in .* are not in .*\n  line \d+: {victim.name}"):
        build_dataset(images, csv, cache_dir=tmp_path / "c")


@pytest.mark.parametrize("content", [b"", b"not a png at all", "truncate"])
def test_unreadable_image_errors_then_skip_counts(tmp_path, small_nih, content):
    images, csv = small_nih
    victim = sorted(images.iterdir())[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if content == "truncate" else content)
    with pytest.raises(NIHDataError, match=rf"cannot read image .*{victim.name} \(line \d+ of .*labels.csv\)"):
        build_dataset(images, csv, cache_dir=tmp_path / "c")
    report = prepare_dataset(images, csv, tmp_path / "out", on_bad_image="skip")
    assert report.skipped == [victim.name]
    assert sum(report.split_rows.values()) + report.num_skipped == report.csv_rows
    card = (tmp_path / "out" / "README.md").read_text()
    assert "**1 image(s) were skipped**" in card and victim.name in card


def test_missing_image_skip_is_counted(tmp_path, small_nih):
    images, csv = small_nih
    victim = sorted(images.iterdir())[0]
    victim.unlink()
    _, report = build_dataset(images, csv, on_bad_image="skip", cache_dir=tmp_path / "c")
    assert report.skipped == [victim.name]


def test_every_pixel_format_loads_as_grayscale_and_resizes(tmp_path, small_nih):
    images, csv = small_nih
    paths = sorted(images.iterdir())
    gray = np.asarray(Image.open(paths[0]))
    Image.fromarray(gray).convert("RGBA").save(paths[0])
    Image.fromarray(gray.astype(np.uint16) * 257).save(paths[1])  # 16-bit, full range
    Image.fromarray(gray).convert("RGB").save(paths[2])
    shutil.copy(TEST_DATA / "00000011_000.png", paths[3])  # a real 256x256 mode-L NIH PNG
    dataset, _ = build_dataset(images, csv, image_size=32, cache_dir=tmp_path / "c")
    by_name = {row["image_id"]: row["image"] for split in dataset.values() for row in split}
    for path in paths[:4]:
        image = by_name[path.name]
        assert image.mode == "L" and image.size == (32, 32)
    sixteen = np.asarray(by_name[paths[1].name], dtype=int)
    rgba = np.asarray(by_name[paths[0].name], dtype=int)
    assert np.abs(sixteen - rgba).max() <= 1  # same picture whatever the container


def test_official_lists_fix_the_test_split(tmp_path, small_nih):
    images, csv = small_nih
    frame = pd.read_csv(csv)
    test_patients = frame["Patient ID"].drop_duplicates().head(3)
    test_names = frame[frame["Patient ID"].isin(test_patients)]["Image Index"]
    (tmp_path / "test_list.txt").write_text("\n".join(test_names))
    (tmp_path / "train_val_list.txt").write_text(
        "\n".join(frame[~frame["Image Index"].isin(test_names)]["Image Index"])
    )
    dataset, _ = build_dataset(
        images,
        csv,
        config="full",
        train_val_list=str(tmp_path / "train_val_list.txt"),
        test_list=str(tmp_path / "test_list.txt"),
        cache_dir=tmp_path / "c",
    )
    assert sorted(dataset["test"]["image_id"]) == sorted(test_names)
    with pytest.raises(NIHDataError, match="use config 'full'"):
        build_dataset(images, csv, test_list=str(tmp_path / "test_list.txt"), cache_dir=tmp_path / "d")


def test_a_folder_of_dicoms_prepares_like_the_pngs(tmp_path, small_nih):
    """Hospital exports: 12-bit DICOMs (MONOCHROME1 for some, one without a file extension) named in the CSV."""
    from xray_files import to_bits, write_dicom

    images, csv = small_nih
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    dicoms = tmp_path / "dicoms"
    dicoms.mkdir()
    names = []
    for index, name in enumerate(frame["Image Index"]):
        gray = np.asarray(Image.open(images / name), dtype=np.int64)
        new_name = name.removesuffix(".png") + ("" if index == 0 else ".dcm")
        if index % 2:
            write_dicom(dicoms / new_name, 4095 - to_bits(gray, 12), photometric="MONOCHROME1")
        else:
            write_dicom(dicoms / new_name, to_bits(gray, 12))
        names.append(new_name)
    frame["Image Index"] = names
    frame.to_csv(tmp_path / "dicoms.csv", index=False)
    from_png, _ = build_dataset(images, csv, cache_dir=tmp_path / "a")
    from_dicom, report = build_dataset(dicoms, tmp_path / "dicoms.csv", cache_dir=tmp_path / "b")
    assert report.num_skipped == 0
    for split in from_png:
        assert len(from_png[split]) == len(from_dicom[split])
        for png_row, dicom_row in zip(from_png[split], from_dicom[split], strict=True):
            assert dicom_row["image_id"].removesuffix(".dcm") == png_row["image_id"].removesuffix(".png")
            assert np.array_equal(np.asarray(dicom_row["image"]), np.asarray(png_row["image"]))
