"""Other hospitals' releases: the label map, each reader on its native-layout fixture, the options, bad input."""

import importlib.util
import json
import math
import sys

import datasets
import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from external_fixtures import (
    CHEXPERT_HEADER,
    MIMIC_LABELS,
    PLANTED_AS,
    SOURCES,
    UNPLANTED,
    VINDR_LABELS,
    make_fixture,
)
from test_scripts import run

from cxr_vit.constants import LABEL2ID, LABELS
from cxr_vit.data.sources import RELEASE_NAMES, SourceOptions, read_source
from cxr_vit.label_map import APPROXIMATE, LABEL_MAP, LabelMapper, annotated_labels, markdown_table, used_targets
from cxr_vit.public_names import dataset_reference

# ---- the label map -------------------------------------------------------------------------------------------------

RELEASE_COLUMNS = {
    "chexpert": CHEXPERT_HEADER[5:],
    "mimic_cxr": MIMIC_LABELS,
    "vindr_cxr": VINDR_LABELS,
    "padchest": tuple(PLANTED_AS["padchest"]),  # PadChest's terms are open-ended: the ones the fixture uses
}


@pytest.mark.parametrize("source", SOURCES)
def test_every_release_column_is_in_the_map(source):
    """Each label column of the release's header is listed (mapped or explicitly nothing), each target is canonical."""
    assert set(RELEASE_COLUMNS[source]) <= set(LABEL_MAP[source])
    for target in LABEL_MAP[source].values():
        assert target is None or set(target.labels) <= set(LABELS)


@pytest.mark.parametrize("source", SOURCES)
def test_map_agrees_with_the_fixtures_independent_table(source):
    """The fixtures plant each native label as the NIH finding(s) it stands for, written down independently; the
    map (with approximations) must say the same, else a planted model's AUC on that label would fall to chance."""
    targets = used_targets(source, approximate_labels=True)
    for native, planted in PLANTED_AS[source].items():
        assert targets.get(native) == planted, native
    for native in UNPLANTED[source]:  # drawn without a grating: the map must not use them
        assert native not in targets, native


def test_synonyms_are_used_and_approximations_only_when_asked():
    assert used_targets("chexpert")["Pleural Effusion"] == ("Effusion",)
    assert used_targets("padchest")["hiatal hernia"] == ("Hernia",)
    assert used_targets("vindr_cxr")["Pulmonary fibrosis"] == ("Fibrosis",)
    assert "Lung Lesion" not in used_targets("chexpert")
    assert used_targets("chexpert", approximate_labels=True)["Lung Lesion"] == ("Mass", "Nodule")
    assert LABEL_MAP["chexpert"]["Lung Lesion"].kind == APPROXIMATE
    assert "Mass" not in annotated_labels("chexpert") and "Mass" in annotated_labels("chexpert", True)
    assert annotated_labels("padchest") == LABELS and annotated_labels("nih") == LABELS
    assert "Hernia" not in annotated_labels("vindr_cxr", True)


def test_the_docs_show_the_map_as_it_is():
    text = (REPO / "docs" / "external.md").read_text()
    assert markdown_table() in text


def test_mapper_combines_several_source_labels_and_leaves_the_rest_missing():
    columns = ["pleural effusion", "loculated pleural effusion", "cardiomegaly"]
    values = np.array([[1, np.nan, 0], [np.nan, 0, 1], [0, 0, np.nan]], dtype=np.float32)
    mapped = LabelMapper("padchest")(values, columns)
    effusion, heart, mass = LABEL2ID["Effusion"], LABEL2ID["Cardiomegaly"], LABEL2ID["Mass"]
    assert mapped[0, effusion] == 1 and math.isnan(mapped[1, effusion]) and mapped[2, effusion] == 0
    assert mapped[0, heart] == 0 and mapped[1, heart] == 1 and math.isnan(mapped[2, heart])
    assert np.isnan(mapped[:, mass]).all()  # no column of this table maps to Mass: missing, not negative


# ---- each release through scripts/prepare_data.py ----------------------------------------------------------------


def expected_positives(fixture: dict, image_id: str, approximate_labels: bool = False) -> set[str]:
    """The NIH labels a film is positive for: the planted findings of its positive native labels that are used."""
    used = used_targets(fixture["source"], approximate_labels)
    table = PLANTED_AS[fixture["source"]]
    return {target for native in fixture["native"][image_id] if native in used for target in table[native]}


def check_planted_labels(prepared: datasets.DatasetDict, fixture: dict, annotated: tuple[str, ...]) -> int:
    """Every row's labels: positive exactly where the film carries the grating of a used native label, NaN where not
    annotated (or uncertain). Returns the number of rows."""
    rows = 0
    for split in prepared.values():
        for image_id, labels, source in zip(split["image_id"], split["labels"], split["source"], strict=True):
            expected = expected_positives(fixture, image_id)
            assert expected <= set(fixture["planted"][image_id])
            for label, value in zip(LABELS, labels, strict=True):
                if label not in annotated:
                    assert math.isnan(value), (image_id, label)
                elif label == "No Finding":
                    assert math.isnan(value) or value == float(not fixture["planted"][image_id]), image_id
                elif not math.isnan(value):
                    assert value == float(label in expected), (image_id, label, value)
            assert source == fixture["source"]
            rows += 1
    return rows


EXPECTED_SPLITS = {
    "chexpert": {"train", "validation"},  # train.csv: train/ films only
    "mimic_cxr": {"train", "validation", "test"},  # the official split file
    "padchest": {"train", "validation", "test"},  # patient-wise
    "vindr_cxr": {"train", "validation"},  # image_labels_train.csv
}


def prepare(argv: list[str], capsys) -> tuple[int, str, str]:
    """scripts/prepare_data.py in this process (its own argument parser and ``main``): (returncode, stdout, stderr).

    One interpreter for all calls keeps these tests fast; test_prepare_data_cli runs the script as a user does."""
    from transformers import HfArgumentParser

    from cxr_vit.data import PrepareArguments

    spec = importlib.util.spec_from_file_location("prepare_data_script", REPO / "scripts" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (args,) = HfArgumentParser(PrepareArguments).parse_args_into_dataclasses(args=[str(arg) for arg in argv])
    code = module.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("source", SOURCES)
def test_prepare_data_reads_each_release_in_its_native_layout(tmp_path, capsys, source):
    fixture = make_fixture(source, tmp_path / source)
    out = tmp_path / "prepared"
    code, stdout, stderr = prepare([*fixture["args"], "--output_dir", out], capsys)
    assert code == 0, stderr
    prepared = datasets.load_dataset("parquet", data_dir=str(out / "data"))
    record = json.loads((out / "prepare.json").read_text())
    assert record["source"] == source and set(prepared) == EXPECTED_SPLITS[source]
    annotated = tuple(record["annotated_labels"])
    assert annotated == annotated_labels(source)
    rows = check_planted_labels(prepared, fixture, annotated)
    films = 32 if source == "chexpert" else 30 if source == "vindr_cxr" else 40  # the label file's films
    assert rows == films == record["counts"]["listed"] == record["counts"]["kept"]
    assert record["options"]["approximate_labels"] is False and record["skipped"] == 0
    image = prepared[next(iter(prepared))][0]["image"]
    assert image.size == (64, 64) and image.mode == "L"
    if source == "padchest":
        assert record["unknown_labels"]["aortic elongation"] > 0 and "aortic elongation" in stdout
    if source == "vindr_cxr":
        assert record["options"]["readers"] == "majority" and record["counts"]["max_readers_per_image"] == 3
    patients = {split: set(prepared[split]["patient_id"]) for split in prepared}
    assert not patients["train"] & patients["validation"]  # the carve-out is patient-wise
    # what published files (cards, reports) call the folder: its release, never its path
    assert dataset_reference(str(out)).name.startswith(f"{RELEASE_NAMES[source]}, prepared locally (split seed ")
    code, stdout, _ = prepare([*fixture["args"], "--output_dir", out], capsys)
    assert code == 0 and "is up to date" in stdout  # prepare.json matches: reused, not rebuilt
    code, _, stderr = prepare([*fixture["args"], "--output_dir", out, "--approximate_labels"], capsys)
    assert code == 2 and "approximate_labels False -> True" in stderr  # other settings: never reused silently


def test_prepare_data_cli(tmp_path):
    """The script as a user runs it: VinDr's consensus test labels (one test split)."""
    fixture = make_fixture("vindr_cxr", tmp_path / "vindr")
    argv = [sys.executable, "scripts/prepare_data.py", "--source", "vindr_cxr", "--images_dir", str(tmp_path / "vindr"),
            "--labels_csv", str(fixture["test_labels_csv"]), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    result = run(*argv)
    assert result.returncode == 0, result.stderr
    assert "vindr_cxr annotates 12 of 15 labels" in result.stdout
    prepared = datasets.load_dataset(str(tmp_path / "out"))
    assert set(prepared) == {"test"} and prepared["test"].num_rows == 10
    assert check_planted_labels(prepared, fixture, annotated_labels("vindr_cxr")) == 10


# ---- the options ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("external")
    return {source: make_fixture(source, root / source) for source in SOURCES}


def options(fixture: dict, **kwargs) -> SourceOptions:
    paths = {name: fixture.get(name) for name in ("metadata_csv", "split_csv")}
    return SourceOptions(fixture["source"], fixture["images_dir"], fixture["labels_csv"], **paths, **kwargs)


def label_matrix(fixture: dict, **kwargs) -> np.ndarray:
    return np.asarray(read_source(options(fixture, **kwargs)).frame["labels"].tolist(), dtype=np.float32)


@pytest.mark.parametrize("source", ["chexpert", "mimic_cxr"])
def test_uncertain_labels_are_missing_negative_or_positive(fixtures, source):
    missing = label_matrix(fixtures[source], uncertain="missing")
    negative = label_matrix(fixtures[source], uncertain="negative")
    positive = label_matrix(fixtures[source], uncertain="positive")
    uncertain = np.isnan(missing) & ~np.isnan(negative)  # annotated labels that are NaN only when missing
    assert uncertain.sum() > 0
    assert (negative[uncertain] == 0).all() and (positive[uncertain] == 1).all()
    assert np.array_equal(np.isnan(negative), np.isnan(positive))  # only unannotated labels stay NaN


def test_vindr_readers_majority_or_any(fixtures):
    fixture = fixtures["vindr_cxr"]
    majority, any_reader = label_matrix(fixture, readers="majority"), label_matrix(fixture, readers="any")
    annotated = ~np.isnan(majority)
    assert (any_reader[annotated] >= majority[annotated]).all()
    assert (any_reader[annotated] > majority[annotated]).sum() > 0  # a lone reader's mark counts only for "any"
    frame = read_source(options(fixture, readers="majority")).frame
    for image_id, labels in zip(frame["image_id"], frame["labels"], strict=True):  # the majority is the planted truth
        planted = set(fixture["planted"][image_id])
        assert all(labels[LABEL2ID[label]] == 1 for label in planted if label in annotated_labels("vindr_cxr"))


def test_approximate_labels_add_mass_and_nodule_from_lung_lesion(fixtures):
    fixture = fixtures["chexpert"]
    exact, approximate = label_matrix(fixture), label_matrix(fixture, approximate_labels=True)
    mass, nodule = LABEL2ID["Mass"], LABEL2ID["Nodule"]
    assert np.isnan(exact[:, [mass, nodule]]).all()
    known = ~np.isnan(approximate[:, mass])
    assert known.sum() > 0 and (approximate[:, mass] == 1).sum() > 0
    assert np.array_equal(approximate[known, mass], approximate[known, nodule])


# ---- the script's answers to bad input ---------------------------------------------------------------------------


def call_prepare(fixture: dict, output_dir, capsys, **fields) -> tuple[int, str, str]:
    """The fixture's prepare_data.py arguments with ``fields`` replaced (None: left out)."""
    given = {"metadata_csv": fixture.get("metadata_csv"), "split_csv": fixture.get("split_csv")}
    given |= {"source": fixture["source"], "images_dir": fixture["images_dir"], "labels_csv": fixture["labels_csv"]}
    given |= {"output_dir": output_dir, **fields}
    argv = [part for name, value in given.items() if value is not None for part in (f"--{name}", value)]
    return prepare(argv, capsys)


@pytest.mark.parametrize(
    ("source", "given_as", "lacks"),
    [
        ("chexpert", "vindr_cxr", "'image_id'"),
        ("vindr_cxr", "padchest", "'ImageID'"),
        ("padchest", "chexpert", "'Path'"),
    ],
)
def test_a_label_file_given_with_another_source_is_one_line(fixtures, tmp_path, capsys, source, given_as, lacks):
    code, _, err = call_prepare(fixtures[source], tmp_path / "out", capsys, source=given_as, split_csv=None)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "lacks the column(s)" in lines[0] and lacks in lines[0] and str(fixtures[source]["labels_csv"]) in lines[0]


def test_mimic_without_its_split_file_says_so(fixtures, tmp_path, capsys):
    code, _, err = call_prepare(fixtures["mimic_cxr"], tmp_path / "out", capsys, split_csv=None)
    assert code == 2 and "--split_csv mimic-cxr-2.0.0-split.csv" in err


def test_missing_images_are_an_error_or_counted_when_skipped(fixtures, tmp_path, capsys):
    fixture = make_fixture("padchest", tmp_path / "padchest")
    table = pd.read_csv(fixture["labels_csv"], dtype=str)
    pa_film = table[table["Projection"] == "PA"].iloc[0]
    victim = tmp_path / "padchest" / pa_film["ImageDir"] / pa_film["ImageID"]
    victim.unlink()
    code, _, err = call_prepare(fixture, tmp_path / "out", capsys)
    assert code == 2 and victim.name in err and "on_bad_image" in err
    code, _, _ = call_prepare(fixture, tmp_path / "skipped", capsys, on_bad_image="skip", views="PA,AP_horizontal")
    assert code == 0
    record = json.loads((tmp_path / "skipped" / "prepare.json").read_text())
    assert record["counts"]["missing_files"] + record["counts"]["kept"] == record["counts"]["listed"]
    assert record["skipped_images"] == [victim.name] and record["counts"]["missing_files"] == 1
    assert record["counts"]["dropped_by_view"] > 0 and record["options"]["views"] == ["PA", "AP_HORIZONTAL"]
    prepared = datasets.load_dataset("parquet", data_dir=str(tmp_path / "skipped" / "data"))
    views = {view for split in prepared.values() for view in split["view_position"]}
    assert views <= {"PA", "AP_HORIZONTAL"}


def test_an_unreadable_padchest_labels_value_names_its_line(fixtures, tmp_path, capsys):
    fixture = fixtures["padchest"]
    lines = fixture["labels_csv"].read_text().splitlines()
    lines[3] = lines[3].replace("['", "['unclosed", 1).replace("']", "'", 1)
    broken = tmp_path / fixture["labels_csv"].name
    broken.write_text("\n".join(lines) + "\n")
    code, _, err = call_prepare(fixture, tmp_path / "out", capsys, labels_csv=str(broken))
    assert code == 2 and "line 4" in err and "not a list of label strings" in err
