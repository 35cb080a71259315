"""The evaluation report's reporting-standard sections: subgroups, calibration, localization, the checklist, and the
model card and Hub push that carry them. One evaluate.py run of a tiny random-init model on the prepared mini set
with the release's boxes of the bundled films serves most tests."""

import json
import shutil

import datasets
import numpy as np
import pytest
import yaml
from conftest import REPO, TEST_DATA
from hub_server import HubServer, point_hf_clients_at
from inference_helpers import load_script, save_tiny_model
from PIL import Image

from cxr_vit.cards import ReportMismatchError, find_report, render_model_card, template_path
from cxr_vit.constants import LABELS
from cxr_vit.evaluation import weights_fingerprint
from cxr_vit.evaluation.calibration import calibration_report
from cxr_vit.evaluation.explainers import DEFAULT_EXPLAINER
from cxr_vit.evaluation.localization import read_bbox_csv
from cxr_vit.modeling import timm_state_dict
from cxr_vit.prediction import load_model

MINI_BOXES = TEST_DATA / "bbox_nih_mini.csv"  # the release's 9 boxes on films of the bundled mini set, verbatim
evaluate_script = load_script(REPO / "scripts" / "evaluate.py")


@pytest.fixture(scope="module")
def evaluated(prepared_mini, tmp_path_factory):
    """A tiny model folder evaluated into <model>/evaluation with --bbox_csv: (model_dir, report)."""
    model = save_tiny_model(tmp_path_factory.mktemp("evaluated") / "model")
    args = ["--model", str(model), "--dataset_name", str(prepared_mini), "--output_dir", str(model / "evaluation")]
    assert evaluate_script.main([*args, "--n_bootstrap", "20", "--bbox_csv", str(MINI_BOXES)]) == 0
    return model, json.loads((model / "evaluation" / "report.json").read_text())


def test_subgroups_are_reported_from_the_split_metadata(evaluated, prepared_mini):
    model, report = evaluated
    test = datasets.load_dataset(str(prepared_mini), split="test")
    subgroups = report["subgroups"]
    assert subgroups["available"] and subgroups["missing_columns"] == []
    assert list(subgroups["attributes"]) == ["sex", "age", "view_position"]
    for section in subgroups["attributes"].values():
        assert sum(group["n_images"] for group in section["groups"].values()) + section["unassigned"] == len(test)
    assert subgroups["attributes"]["sex"]["groups"]["M"]["n_images"] == sum(s == "M" for s in test["sex"])
    assert subgroups["settings"]["thresholds"] == report["thresholds"]  # the validation-chosen ones
    markdown = (model / "evaluation" / "report.md").read_text()
    assert "## Subgroup analysis" in markdown and "### View position" in markdown
    assert "![Subgroup macro AUCs](subgroup_forest.png)" in markdown
    assert Image.open(model / "evaluation" / "subgroup_forest.png").size[0] >= 700


def test_calibration_section_matches_the_building_block(evaluated, prepared_mini):
    model, report = evaluated
    test = datasets.load_dataset(str(prepared_mini), split="test")
    from cxr_vit.inference import Classifier

    probabilities, targets = Classifier(load_model(model), device="cpu").predict_dataset(test, progress=False)
    expected = calibration_report(probabilities, targets)
    section = report["calibration"]
    assert section["uncalibrated"] is None and section["scaling"] is None  # a plain model: one set of figures
    assert section["model"]["ece_macro"] == pytest.approx(expected["ece_macro"], abs=1e-9)
    for label in LABELS:
        assert section["model"]["labels"][label]["brier"] == pytest.approx(expected["labels"][label]["brier"])
    markdown = (model / "evaluation" / "report.md").read_text()
    assert "## Calibration" in markdown and "15 equal-width bins" in markdown and "not temperature-scaled" in markdown
    assert Image.open(model / "evaluation" / "reliability_diagram.png").size[0] >= 1000


def test_localization_scores_the_release_boxes_on_the_split(evaluated, prepared_mini):
    model, report = evaluated
    test_ids = set(datasets.load_dataset(str(prepared_mini), split="test")["image_id"])
    boxes = read_bbox_csv(MINI_BOXES)
    localization = report["localization"]
    assert localization["explainer"] == DEFAULT_EXPLAINER and localization["explainer_choice"] == "the default"
    assert localization["n_boxes_in_file"] == 9
    assert localization["n_boxes_scored"] == boxes["image_id"].isin(test_ids).sum() == 2
    assert localization["overall"]["n_boxes"] == 2 and 0 < localization["overall"]["chance_pointing"] < 1
    assert set(localization["overall"]["iou_accuracy"]) == {"0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"}
    markdown = (model / "evaluation" / "report.md").read_text()
    assert "## Localization" in markdown and "Table 4" in markdown and "Table 19" not in markdown
    # the reporting checklist names what this run computed, localization included
    topics = [item["topic"] for item in report["checklist"]]
    assert any("subgroups" in topic for topic in topics) and any("saliency" in topic for topic in topics)
    assert "CLAIM 2024" in markdown and "TRIPOD+AI" in markdown


def test_without_metadata_or_image_ids_the_report_says_what_is_missing(evaluated, prepared_mini, tmp_path, capsys):
    """A dataset from another publisher, Parquet without sex/age/view and file names: subgroups "not available",
    no forest plot, no subgroup items in the checklist; --bbox_csv then has nothing to match and says so."""
    model, _ = evaluated
    bare = tmp_path / "bare"
    for split, rows in datasets.load_dataset(str(prepared_mini)).items():
        rows.remove_columns(["sex", "age", "view_position", "image_id"]).to_parquet(bare / "data" / f"{split}.parquet")
    out = tmp_path / "report"
    args = ["--model", str(model), "--dataset_name", str(bare), "--output_dir", str(out), "--n_bootstrap", "5"]
    assert evaluate_script.main(args) == 0
    assert "subgroups: not available: the evaluated split has none of the columns" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["subgroups"]["available"] is False and "sex, age, view_position" in report["subgroups"]["reason"]
    assert "localization" not in report and not (out / "subgroup_forest.png").exists()
    topics = " ".join(item["topic"] for item in report["checklist"])
    assert "calibration" in topics and "subgroups" not in topics and "saliency" not in topics
    markdown = (out / "report.md").read_text()
    assert "## Subgroup analysis\n\nNot available: the evaluated split has none of the columns" in markdown
    assert report["model_fingerprint"] == weights_fingerprint(timm_state_dict(load_model(model).state_dict()))

    assert evaluate_script.main([*args, "--bbox_csv", str(MINI_BOXES)]) == 2
    assert "error: --bbox_csv: split 'test' of" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("00000001_000.png,Fracture,1,2,3,4", "unknown finding 'Fracture'"),
        ("00000001_000.png,Mass,1,2,-3,4", "positive width"),
    ],
)
def test_a_bad_box_list_is_an_error_before_any_inference(evaluated, prepared_mini, tmp_path, capsys, row, message):
    model, _ = evaluated
    boxes = tmp_path / "BBox_List_2017.csv"
    boxes.write_text(MINI_BOXES.read_text() + row + "\n")
    args = ["--model", str(model), "--dataset_name", str(prepared_mini), "--output_dir", str(tmp_path / "r")]
    assert evaluate_script.main([*args, "--bbox_csv", str(boxes)]) == 2
    error = capsys.readouterr().err
    assert f"error: {boxes}: 1 bad row(s):\n  line 11 (00000001_000.png): " in error and message in error
    assert "Traceback" not in error
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):  # --explainer without --bbox_csv: argparse's usage error
        evaluate_script.main([*args, "--explainer", "gradcam"])


# ---- the model card and the Hub ------------------------------------------------------------------------------


def test_templates_come_from_this_checkout():
    assert template_path("model_card") == str(REPO / "model_card" / "README.md")


def test_the_card_shows_the_report_beside_the_weights(evaluated):
    model, report = evaluated
    card = str(render_model_card(model))
    assert "## Evaluation report" in card and "[evaluation/report.md](evaluation/report.md)" in card
    assert f"split `test` of `{report['dataset']}`" in card and "selected on the validation split only" in card
    assert f"ECE {report['calibration']['model']['ece_macro']:.3f}" in card
    assert "| Sex | F |" in card and "| View position | AP |" in card and "| Age (years) | 80+ |" in card
    assert "pointing game" in card and DEFAULT_EXPLAINER in card
    assert "**Subgroups**" in card and "**Calibration**" in card  # the limitations name both caveats
    assert yaml.safe_load(card.split("---")[1])["library_name"] == "transformers"


def test_a_report_of_other_weights_is_not_used(evaluated, tmp_path, caplog):
    model, _ = evaluated
    retrained = tmp_path / "model"
    save_tiny_model(retrained, seed=1)  # the same folder layout, other weights: e.g. trained again in place
    shutil.copytree(model / "evaluation", retrained / "evaluation")
    assert find_report(retrained) is None and "fingerprints differ" in caplog.text
    assert "## Evaluation report" not in str(render_model_card(retrained))
    with pytest.raises(ReportMismatchError, match="describes other weights"):
        find_report(retrained, retrained / "evaluation")
    with pytest.raises(ReportMismatchError, match="no report.json there"):
        find_report(retrained, tmp_path / "nowhere")


def test_push_to_hub_uploads_the_report_with_the_card(evaluated, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi, hf_hub_download

    model, _ = evaluated
    main = load_script(REPO / "scripts" / "push_to_hub.py").main
    with HubServer(tmp_path / "hub") as hub:
        point_hf_clients_at(hub.endpoint, monkeypatch, token=hub.token, cache_dir=tmp_path / "hf-home")
        assert main(["--model_dir", str(model), "--repo_id", "test-user/cxr-reported"]) == 0
        files = set(HfApi().list_repo_files("test-user/cxr-reported"))
        card = open(hf_hub_download("test-user/cxr-reported", "README.md")).read()
        assert main(["--model_dir", str(model), "--repo_id", "x", "--report", str(tmp_path / "none")]) == 2
    assert {"evaluation/report.json", "evaluation/report.md", "evaluation/thresholds.json"} <= files
    assert {
        "evaluation/reliability_diagram.png",
        "evaluation/subgroup_forest.png",
        "evaluation/roc_curves.png",
    } <= files
    assert "## Evaluation report" in card and "| Sex | M |" in card
    assert "--report" in capsys.readouterr().err
    assert np.isfinite(json.loads((model / "evaluation" / "report.json").read_text())["auc_macro"]["value"])
