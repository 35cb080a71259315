"""Cards and reports that are safe to publish: the data named by Hub id or described, never by a local path; the
card metadata as the Hub's own parser reads it; and a sweep of every uploaded byte for the folder a run was made in.
"""

import json
import math
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import REPO, TEST_DATA
from huggingface_hub import DatasetCard, HfApi, ModelCard
from inference_helpers import TINY_ARCH, TINY_SIZE, load_script

from cxr_vit.cards import render_model_card
from cxr_vit.constants import LABELS
from cxr_vit.data.provenance import read_record
from cxr_vit.hub import push_dataset
from cxr_vit.metrics import multilabel_metrics
from cxr_vit.modeling import create_model, save_model
from cxr_vit.public_names import LOCAL_DATASET, hub_id_of_cached_file
from cxr_vit.training import parse_args, save_run_args

SCRIPTS = REPO / "scripts"


def card_metadata(card: ModelCard) -> dict:
    """The card's YAML header as the Hub's parser reads it from the text."""
    return ModelCard(str(card)).data.to_dict()


def write_run_args(model_dir: Path, *flags: str) -> None:
    """run_args.yaml as train.py writes it, for the flags given."""
    save_run_args(model_dir / "run_args.yaml", *parse_args(["--output_dir", str(model_dir), *flags]))


def one_block_model(folder: Path, **kwargs) -> Path:
    """A random-init one-block ViT-Tiny saved as train.py saves models: the cards need its files, not its depth."""
    save_model(
        create_model(TINY_ARCH, pretrained=False, image_size=TINY_SIZE, model_kwargs={"depth": 1}, **kwargs), folder
    )
    return folder


def stored_files(storage: Path) -> dict[str, bytes]:
    """Every version of every file the loopback Hub holds, as ``<repo dir>:<path in repo>@<commit>`` -> bytes."""
    stored = {}
    for record in storage.rglob("repo.json"):
        for commit, content in json.loads(record.read_text())["commits"].items():
            for name, entry in content["files"].items():
                stored[f"{record.parent.relative_to(storage)}:{name}@{commit[:8]}"] = (
                    record.parent / "objects" / entry["sha256"]
                ).read_bytes()
    return stored


# ---- how the data and the checkpoint are named ------------------------------------------------------------------


def test_a_local_dataset_is_described_by_seed_and_counts_not_by_its_path(prepared_mini, tmp_path):
    model = one_block_model(tmp_path / "model")
    write_run_args(model, "--dataset_name", str(prepared_mini))
    record = read_record(prepared_mini)
    card = render_model_card(model)
    counts = ", ".join(f"{split} {count:,}" for split, count in record["splits"].items())
    described = f"{LOCAL_DATASET} (split seed {record['parameters']['split_seed']}; {counts} images)"
    assert described in str(card) and str(prepared_mini) not in str(card) and prepared_mini.parent.name not in str(card)
    assert "datasets" not in card_metadata(card)

    # the Hub id given at push time wins; a Hub id trained on is one; a prepared folder that is gone is described
    assert card_metadata(render_model_card(model, dataset_repo="you/nih"))["datasets"] == ["you/nih"]
    write_run_args(model, "--dataset_name", "you/nih-hub")
    assert card_metadata(render_model_card(model))["datasets"] == ["you/nih-hub"]
    gone = "data/was_prepared_here"
    write_run_args(model, "--dataset_name", gone, "--images_dir", "x", "--labels_csv", "y.csv", "--split_seed", "7")
    (model / "test_results.json").write_text(json.dumps({"test_samples": 12}))
    card = render_model_card(model)
    assert f"{LOCAL_DATASET} (split seed 7; test 12 images)" in str(card) and gone not in str(card)


def test_a_checkpoint_from_the_hub_cache_is_the_base_model(tmp_path):
    state = create_model(TINY_ARCH, False, image_size=TINY_SIZE, model_kwargs={"depth": 1}).timm_model.state_dict()
    snapshot = tmp_path / "hub" / "models--someone--cxr-mae" / "snapshots" / "0123abcd"
    for folder, expected in [(snapshot, "someone/cxr-mae"), (tmp_path / "downloads", None)]:
        folder.mkdir(parents=True)
        torch.save({"model": state}, folder / "mae.pth")
        assert hub_id_of_cached_file(folder / "mae.pth") == expected
        model_dir = tmp_path / f"model-{folder.name}"
        weights = str(folder / "mae.pth")
        one_block_model(model_dir, pretrained_weights=weights)
        write_run_args(model_dir, "--model_name", TINY_ARCH, "--pretrained_weights", weights)
        card = render_model_card(model_dir, repo_id="you/cxr")
        assert card_metadata(card).get("base_model") == expected
        assert "checkpoint `mae.pth`" in str(card) and str(folder) not in str(card)
    assert "local research checkpoint `mae.pth`" in str(card)


# ---- a real run in a temporary folder, pushed, read back ---------------------------------------------------------


def test_nothing_published_names_the_folder_the_run_was_made_in(hub, prepared_mini, tmp_path, capsys):
    """prepare (a copy) -> push the dataset -> train.py --push_to_hub -> evaluate.py -> calibrate.py -> push_to_hub.py;
    then every byte the Hub holds is searched for the local folders, and the cards are read by the Hub's parser."""
    work = tmp_path / "leakcheck-workdir"
    prepared = work / "nih-prepared"
    shutil.copytree(prepared_mini, prepared)
    push_dataset(prepared, "test-user/nih-leak")
    assert read_record(prepared)["hub"] == {"repo_id": "test-user/nih-leak"}

    run = work / "run"
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    config.update(dataset_name=str(prepared), images_dir=None, labels_csv=None, output_dir=str(run), report_to="none")
    config.update(model_kwargs={"depth": 1}, num_train_epochs=1, max_train_samples=64, max_eval_samples=64)
    (work / "tiny.yaml").write_text(yaml.safe_dump({**config, "train_metrics": False}))
    train = load_script(SCRIPTS / "train.py").main
    train(*parse_args(["--config", str(work / "tiny.yaml"), "--push_to_hub", "--hub_model_id", "test-user/cxr-leak"]))
    evaluate = load_script(SCRIPTS / "evaluate.py").main
    common = ["--dataset_name", str(prepared), "--n_bootstrap", "5"]
    bbox = ["--bbox_csv", str(TEST_DATA / "bbox_nih_mini.csv"), "--save_thresholds"]
    assert evaluate(["--model", str(run), *common, "--output_dir", str(run / "evaluation"), *bbox]) == 0
    push = load_script(SCRIPTS / "push_to_hub.py").main
    assert push(["--model_dir", str(run), "--repo_id", "test-user/cxr-leak"]) == 0
    calibrated = work / "calibrated"
    args = ["--model", str(run), "--dataset_name", str(prepared), "--output_dir", str(calibrated)]
    assert load_script(SCRIPTS / "calibrate.py").main(args) == 0
    assert push(["--model_dir", str(calibrated), "--repo_id", "test-user/cxr-leak-calibrated"]) == 0

    api = HfApi()
    uploaded = set(api.list_repo_files("test-user/cxr-leak"))
    assert {"README.md", "config.json", "evaluation/report.json", "evaluation/report.md"} <= uploaded
    assert {"evaluation/thresholds.json", "evaluation/roc_curves.png", "training_curves.png"} <= uploaded
    assert "run_args.yaml" not in uploaded  # it holds the local paths; uploaded only with --include_run_args
    assert "prepare.json" in api.list_repo_files("test-user/nih-leak", repo_type="dataset")

    # the sweep: the full paths and their distinctive parts, in every version of every file the Hub holds
    local = [tmp_path, prepared_mini, REPO]
    needles = {str(path) for path in local} | {tmp_path.name, tmp_path.parent.name, prepared_mini.parent.name}
    needles |= {work.name, prepared.name, tmp_path.parent.parent.name}  # ... and pytest-of-<user>
    assert str(work).encode() in (run / "run_args.yaml").read_bytes()  # where local paths may stay
    stored = stored_files(hub.storage_dir)
    assert len(stored) >= 20 and any(".parquet@" in name for name in stored)
    leaks = [(name, needle) for name, content in stored.items() for needle in needles if needle.encode() in content]
    assert not leaks

    # the model card as the Hub reads it: metadata and eval_results from test_results.json
    card = ModelCard.load("test-user/cxr-leak")
    test_results = json.loads((run / "test_results.json").read_text())
    assert card.data.model_name == "test-user/cxr-leak"  # model-index
    assert card.data.datasets == ["test-user/nih-leak"] and card.data.base_model is None  # random init
    expected = {"Macro ROC-AUC (14 findings)": test_results["test_auc_macro"]}
    expected |= {f"ROC-AUC {label}": test_results.get(f"test_auc_{label}") for label in LABELS}
    expected = {name: round(value, 4) for name, value in expected.items() if value is not None}
    results = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert results == expected and len(results) >= 2
    for result in card.data.eval_results:
        assert (result.dataset_type, result.dataset_name, result.dataset_split) == ("test-user/nih-leak",) * 2 + (
            "test",
        )
        assert result.metric_type == "roc_auc" and math.isfinite(result.metric_value)
    assert "[test-user/nih-leak](https://huggingface.co/datasets/test-user/nih-leak)" in card.text
    report = json.loads(Path(api.hf_hub_download("test-user/cxr-leak", "evaluation/report.json")).read_text())
    assert report["dataset"] == "test-user/nih-leak" and report["model"] == run.name
    assert ModelCard.load("test-user/cxr-leak-calibrated").data.datasets == ["test-user/nih-leak"]

    # the dataset card: dataset_info as the Hub reads it, against the Parquet shards pushed
    info = DatasetCard.load("test-user/nih-leak").data.dataset_info
    features = datasets.Features._from_yaml_list(info["features"])
    rows = {}
    for name in api.list_repo_files("test-user/nih-leak", repo_type="dataset"):
        if name.endswith(".parquet"):
            shard = pq.ParquetFile(api.hf_hub_download("test-user/nih-leak", name, repo_type="dataset"))
            assert datasets.Features.from_arrow_schema(shard.schema_arrow) == features, name
            split = Path(name).name.split("-")[0]
            rows[split] = rows.get(split, 0) + shard.metadata.num_rows
    assert {split["name"]: split["num_examples"] for split in info["splits"]} == rows == read_record(prepared)["splits"]

    # a report written by an older version, naming the local data, is refused before anything is uploaded
    stale = json.loads((run / "evaluation" / "report.json").read_text()) | {"dataset": str(prepared)}
    (run / "evaluation" / "report.json").write_text(json.dumps(stale))
    capsys.readouterr()
    assert push(["--model_dir", str(run), "--repo_id", "test-user/cxr-stale"]) == 2
    assert f"would publish the local path {prepared}: nothing was uploaded" in capsys.readouterr().err
    assert "model.safetensors" not in api.list_repo_files("test-user/cxr-stale")


# ---- metrics: scikit-learn, and evaluate's roc_auc where it can be loaded ---------------------------------------


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached from here (offline mode, no route, no name), else None."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=10)
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError) as err:
        return f"{constants.ENDPOINT} is unreachable ({getattr(err, 'reason', err)})"
    return None


def test_evaluate_roc_auc_gives_the_same_per_label_aucs():
    evaluate = pytest.importorskip("evaluate", reason="`evaluate` is not installed (pip install evaluate)")
    unreachable = hub_unreachable()
    if unreachable:  # the metric's code is fetched from the Hub at run time; anything else is a failure
        pytest.skip(f"evaluate.load('roc_auc') needs the Hugging Face Hub: {unreachable}")
    roc_auc = evaluate.load("roc_auc", "multilabel")
    rng = np.random.default_rng(0)
    targets = (rng.random((200, len(LABELS))) < 0.3).astype(int)
    probabilities = 1 / (1 + np.exp(-(rng.normal(size=targets.shape) + 1.5 * targets)))
    ours = multilabel_metrics(probabilities, targets)
    theirs = roc_auc.compute(prediction_scores=probabilities, references=targets, average=None)["roc_auc"]
    np.testing.assert_allclose([ours[f"auc_{label}"] for label in LABELS], theirs, rtol=0, atol=1e-12)
    macro = roc_auc.compute(prediction_scores=probabilities, references=targets, average="macro")["roc_auc"]
    assert ours["auc_macro_15"] == pytest.approx(macro, abs=1e-12)
