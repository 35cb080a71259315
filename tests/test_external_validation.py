"""External validation end to end: evaluate.py --split all on a set from another source, and the model x dataset
table of scripts/external_validation.py.

The "other source" is the bundled NIH films rewritten as another source gives them (tests/missing_labels.py): some
labels not annotated at all, a share of the others uncertain (NaN), a ``source`` column. The report's per-label
AUCs must equal sklearn on the known rows of the set's labels and predict.py's probabilities for the same films;
unannotated labels are unscored, with the reason; thresholds are the ones the model's own evaluation chose on its
training source's validation split.
"""

import json

import datasets
import numpy as np
import pandas as pd
import pytest
from conftest import MINI_IMAGES, REPO
from inference_helpers import load_script, only_positive, save_tiny_model
from missing_labels import write_other_source
from PIL import Image
from sklearn.metrics import roc_auc_score

from cxr_vit.constants import FINDINGS, LABELS
from cxr_vit.metrics import NOT_ANNOTATED, ONE_CLASS

MISSING = ("Fibrosis", "Hernia", "Pleural_Thickening", "No Finding")  # as PadChest-like sources lack some
ROWS = 40  # per split of the rewritten set

# The scripts' figures are compared with each other here: in fp32, since bf16 GEMMs (--precision auto on a CPU
# with AVX512-BF16) round differently with a batch's make-up, which moves near-tied AUCs of a tiny model by ~1e-3.
FP32 = ["--precision", "fp32"]

@pytest.fixture(scope="module")
def scripts():
    return {name: load_script(REPO / "scripts" / f"{name}.py").main for name in ("evaluate", "predict",
                                                                                "external_validation")}  # fmt: skip


@pytest.fixture(scope="module")
def nih_model(tmp_path_factory, prepared_mini, scripts):
    """A tiny model evaluated on its own (NIH) test split into <model>/evaluation, which stores its thresholds."""
    model = save_tiny_model(tmp_path_factory.mktemp("nih_model") / "tiny")
    args = ["--model", str(model), "--dataset_name", str(prepared_mini), "--output_dir", str(model / "evaluation")]
    assert scripts["evaluate"]([*args, "--n_bootstrap", "20", *FP32]) == 0
    return model


@pytest.fixture(scope="module")
def other_source(tmp_path_factory, prepared_mini):
    folder = tmp_path_factory.mktemp("other") / "padchest_like"
    return write_other_source(prepared_mini, folder, "padchest", MISSING, uncertain=0.1, rows=ROWS)


@pytest.fixture(scope="module")
def external_report(nih_model, other_source, scripts, tmp_path_factory):
    """evaluate.py --split all of the NIH model on the other source: the output folder."""
    out = tmp_path_factory.mktemp("external") / "report"
    args = ["--model", str(nih_model), "--dataset_name", str(other_source), "--output_dir", str(out)]
    assert scripts["evaluate"]([*args, "--split", "all", "--n_bootstrap", "30", *FP32]) == 0
    return out


def all_images(folder) -> datasets.Dataset:
    return datasets.concatenate_datasets(list(datasets.load_dataset(str(folder)).values()))


def test_evaluate_scores_every_image_of_another_source_on_its_annotated_labels(
    nih_model, other_source, external_report, scripts, tmp_path
):
    out = external_report
    report = json.loads((out / "report.json").read_text())
    internal = json.loads((nih_model / "evaluation" / "report.json").read_text())

    # the independent computation: the set's own labels and predict.py's probabilities for the same films
    images = all_images(other_source)
    targets = np.asarray(images["labels"], dtype=np.float64)
    files = [str(MINI_IMAGES / name) for name in images["image_id"]]
    assert scripts["predict"](["--model", str(nih_model), *files, "--output", str(tmp_path / "p.csv"), *FP32]) == 0
    probabilities = pd.read_csv(tmp_path / "p.csv").set_index("path").loc[files, list(LABELS)].to_numpy()

    assert report["split"] == "all" and report["num_images"] == len(images) == 3 * ROWS
    assert report["sources"] == ["padchest"]
    expected = {}
    for index, label in enumerate(LABELS):
        entry = report["labels"][label]
        known = ~np.isnan(targets[:, index])
        if label in MISSING:
            assert entry["auc"]["value"] is None and entry["reason"] == NOT_ANNOTATED and entry["known"] == 0
            continue
        assert 0 < entry["known"] == known.sum() < len(images)  # the uncertain ones are skipped
        if len(np.unique(targets[known, index])) == 1:  # a rare finding among 120 films
            assert entry["auc"]["value"] is None and entry["reason"] == ONE_CLASS
            continue
        expected[label] = roc_auc_score(targets[known, index], probabilities[known, index])
        assert entry["auc"]["value"] == pytest.approx(expected[label], abs=1e-4), label
    macro_findings = [label for label in FINDINGS if label in expected]
    assert report["macro_findings"] == macro_findings and len(macro_findings) >= 8
    assert report["auc_macro"]["value"] == pytest.approx(np.mean([expected[x] for x in macro_findings]), abs=1e-4)

    # thresholds: the ones the model's own evaluation chose on NIH validation, never the set's own
    stored = json.loads((nih_model / "evaluation" / "thresholds.json").read_text())["thresholds"]
    assert report["thresholds"] == stored and not (out / "thresholds.json").exists()
    effusion = LABELS.index("Effusion")
    known = ~np.isnan(targets[:, effusion])
    positive = targets[known, effusion] == 1
    # the CSV's rounded probabilities decide only the images farther than 1e-4 from the threshold
    surely, maybe = (probabilities[known, effusion] >= stored["Effusion"] + step for step in (1e-4, -1e-4))
    sensitivity, specificity = (report["labels"]["Effusion"][key] for key in ("sensitivity", "specificity"))
    assert surely[positive].mean() - 1e-9 <= sensitivity <= maybe[positive].mean() + 1e-9
    assert 1 - maybe[~positive].mean() - 1e-9 <= specificity <= 1 - surely[~positive].mean() + 1e-9

    section = report["external_validation"]
    assert section["sources"] == ["padchest"] and section["training_sources"] == ["nih"]
    assert list(section["labels"]) == [label for label in LABELS if label not in MISSING]
    row = section["labels"]["Effusion"]
    assert row["internal_auc"] == internal["labels"]["Effusion"]["auc"]
    assert row["difference"]["value"] == pytest.approx(row["external_auc"]["value"] - row["internal_auc"]["value"])
    assert row["difference"]["ci_low"] < row["difference"]["value"] < row["difference"]["ci_high"]
    assert row["external_prevalence"] == pytest.approx(positive.mean())
    markdown = (out / "report.md").read_text()
    assert "## External validation" in markdown and f"n/a ({NOT_ANNOTATED})" in markdown
    assert f"{len(macro_findings)} findings this set annotates" in markdown


def test_another_source_needs_the_thresholds_of_the_training_source(other_source, scripts, tmp_path, capsys):
    model = save_tiny_model(tmp_path / "never_evaluated")
    args = ["--model", str(model), "--dataset_name", str(other_source), "--output_dir", str(tmp_path / "r")]
    assert scripts["evaluate"](args) == 2
    assert "has no stored thresholds" in capsys.readouterr().err


def test_the_table_script_scores_each_model_on_each_dataset(
    nih_model, other_source, external_report, prepared_mini, scripts, tmp_path
):
    """Two models x two sets; a cell equals evaluate.py's report for the same model and set (same bootstrap)."""
    second = save_tiny_model(tmp_path / "second", thresholds=only_positive("Effusion"), seed=1)
    nih_set = write_other_source(prepared_mini, tmp_path / "nih_small", "nih", missing=(), rows=ROWS // 2)
    out = tmp_path / "table"
    args = ["--model", str(nih_model), "--model", str(second), "--dataset_name", str(nih_set)]
    args += ["--dataset_name", str(other_source), "--output_dir", str(out), "--n_bootstrap", "30"]
    assert scripts["external_validation"]([*args, *FP32]) == 0
    result = json.loads((out / "external_validation.json").read_text())
    assert result["models"] == ["tiny", "second"] and result["datasets"] == ["nih_small", "padchest_like"]
    cells = {(cell["model"], cell["dataset"]): cell for cell in result["cells"]}
    report = json.loads((external_report / "report.json").read_text())
    assert len(cells) == 4
    for cell in cells.values():
        values = [cell["labels"][label]["auc"]["value"] for label in cell["macro_findings"]]
        assert cell["auc_macro"]["value"] == pytest.approx(np.mean(values))
    assert all(entry["reason"] != NOT_ANNOTATED for entry in cells["tiny", "nih_small"]["labels"].values())
    assert cells["tiny", "padchest_like"]["macro_findings"] == report["macro_findings"]
    assert not set(MISSING) & set(report["macro_findings"])
    assert cells["second", "padchest_like"]["labels"]["Effusion"]["sensitivity"] == 1.0  # its stored thresholds

    assert cells["tiny", "padchest_like"]["auc_macro"] == report["auc_macro"]
    assert cells["tiny", "padchest_like"]["labels"]["Mass"]["auc"] == report["labels"]["Mass"]["auc"]

    markdown = (out / "external_validation.md").read_text()
    assert "| Model | nih_small | padchest_like |" in markdown and "not annotated" in markdown
    assert Image.open(out / "external_validation.png").size[0] >= 600


@pytest.mark.slow
def test_training_on_two_sources_validates_each_and_the_pool(prepared_mini, other_source, tmp_path):
    """train.py --dataset_name NIH --dataset_name <other source>: the union with the masked loss, validation per
    source and pooled, the sources in config.json and the card."""
    import yaml

    from cxr_vit.training import parse_args

    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    config.update(images_dir=None, labels_csv=None, report_to="none", model_kwargs={"depth": 1}, num_train_epochs=2)
    config.update(max_train_samples=48, max_eval_samples=40, train_metrics=False, output_dir=str(tmp_path / "run"))
    config.pop("dataset_name", None)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    train = load_script(REPO / "scripts" / "train.py").main
    sources = ["--dataset_name", str(prepared_mini), "--dataset_name", str(other_source)]
    train(*parse_args(["--config", str(tmp_path / "tiny.yaml"), *sources]))

    run = tmp_path / "run"
    results = json.loads((run / "all_results.json").read_text())
    for prefix in ("eval", "eval_nih", "eval_padchest", "test", "test_nih", "test_padchest"):
        assert 0.0 <= results[f"{prefix}_auc_macro"] <= 1.0, prefix
    assert results["eval_padchest_num_labels_not_annotated"] == len(MISSING)
    assert "eval_nih_num_labels_not_annotated" not in results and "eval_num_labels_not_annotated" not in results
    assert results["train_samples"] == 48 + ROWS  # --max_train_samples of NIH's, all the other source's
    assert results["eval_samples"] == 2 * ROWS
    history = json.loads((sorted(run.glob("checkpoint-*"))[-1] / "trainer_state.json").read_text())["log_history"]
    assert [entry["epoch"] for entry in history if "eval_padchest_auc_macro" in entry] == [1.0, 2.0]
    assert json.loads((run / "config.json").read_text())["cxr_vit_training_sources"] == ["nih", "padchest"]
    card = (run / "README.md").read_text()
    assert "The union of 2 prepared sets, sources nih, padchest" in card and "skipped by the loss" in card
