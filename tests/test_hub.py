"""Hub round trips against the local Hub-compatible server (tests/hub_server.py)."""

import json
import os
import subprocess
import sys
import time

import datasets
import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import MINI_IMAGES, MINI_KAGGLE_CSV, REPO, TEST_DATA
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

from cxr_vit.constants import LABELS
from cxr_vit.hub import HubAccessError, check_push_access, push_model
from cxr_vit.modeling import create_model, save_model


def hub_env(hub, tmp_path, token=None, endpoint=None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.update(HF_ENDPOINT=endpoint or hub.endpoint, HF_HUB_DISABLE_XET="1", HF_TOKEN=token or hub.token)
    env["HF_HOME"] = str(tmp_path / "hf-home-subprocess")
    env.pop("HF_HUB_OFFLINE", None)
    return env


def run(args, env, timeout=600):
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def card_metadata(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


def test_model_push_opens_in_transformers_pipeline_and_timm(hub, tmp_path):
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", pretrained=False, image_size=64).eval()
    save_model(model, tmp_path / "out")
    push_model(tmp_path / "out", "test-user/cxr-tiny")

    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
        from_transformers = AutoModelForImageClassification.from_pretrained("test-user/cxr-tiny").eval()
        assert torch.equal(from_transformers(pixel_values=pixels).logits, expected)
        from_timm = timm.create_model("hf-hub:test-user/cxr-tiny", pretrained=True).eval()
        assert torch.equal(from_timm(pixels), expected)

    classifier = pipeline("image-classification", model="test-user/cxr-tiny", device="cpu")
    scores = {s["label"]: s["score"] for s in classifier(str(TEST_DATA / "00000017_000.png"), top_k=15)}
    assert set(scores) == set(LABELS)
    inputs = classifier.image_processor(Image.open(TEST_DATA / "00000017_000.png").convert("RGB"))
    with torch.no_grad():
        probabilities = torch.sigmoid(model(**inputs).logits)[0]
    np.testing.assert_allclose([scores[label] for label in LABELS], probabilities.numpy(), rtol=1e-5, atol=1e-6)

    from huggingface_hub import HfApi

    files = set(HfApi().list_repo_files("test-user/cxr-tiny"))
    assert {"model.safetensors", "config.json", "README.md"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)


def test_check_push_access_fails_fast_on_bad_token_and_unreachable_endpoint(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(HubAccessError, match="rejected the token"):
        check_push_access("test-user/x")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert check_push_access("bare-name") == "test-user/bare-name"
    with pytest.raises(HubAccessError, match="invalid repo id"):
        check_push_access("a/b/c")


def test_dataset_push_then_load_dataset_and_streaming(hub, tmp_path):
    out = tmp_path / "prepared"
    result = run(
        [sys.executable, "scripts/prepare_data.py", "--images_dir", str(MINI_IMAGES), "--labels_csv",
         str(MINI_KAGGLE_CSV), "--output_dir", str(out), "--push_to_hub", "--hub_dataset_id", "test-user/nih-mini"],
        hub_env(hub, tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pushed to" in result.stdout
    local = datasets.load_dataset(str(out))
    remote = datasets.load_dataset("test-user/nih-mini")
    for split in ("train", "validation", "test"):
        assert remote[split].features == local[split].features
        assert remote[split]["image_id"] == local[split]["image_id"]
        assert remote[split]["labels"] == local[split]["labels"]
    streamed = next(iter(datasets.load_dataset("test-user/nih-mini", split="test", streaming=True)))
    first = local["test"][0]
    assert streamed["image_id"] == first["image_id"] and streamed["labels"] == first["labels"]
    assert streamed["image"].tobytes() == first["image"].tobytes()
    from huggingface_hub import hf_hub_download

    card = open(hf_hub_download("test-user/nih-mini", "README.md", repo_type="dataset")).read()
    assert "| Hernia |" in card and card_metadata(card)["dataset_info"]["features"]


def test_train_push_fails_fast_before_training(hub, tmp_path):
    args = [sys.executable, "scripts/train.py", "--config", "configs/quickstart.yaml", "--output_dir",
            str(tmp_path / "run"), "--push_to_hub", "--hub_model_id", "test-user/never"]  # fmt: skip
    for env, message in [
        (hub_env(hub, tmp_path, token="hf_wrong"), "rejected the token"),
        (hub_env(hub, tmp_path, endpoint="http://127.0.0.1:9"), "cannot use the Hub at http://127.0.0.1:9"),
    ]:
        start = time.monotonic()
        result = run(args, env, timeout=120)
        assert result.returncode != 0
        assert message in result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "run").exists(), "nothing was trained"
        assert time.monotonic() - start < 60


@pytest.mark.slow
def test_train_from_hub_dataset_and_push_end_to_end(hub, tmp_path):
    """prepare --push_to_hub, then train.py --dataset_name <hub id> --push_to_hub, then load what was pushed."""
    env = hub_env(hub, tmp_path)
    result = run(
        [sys.executable, "scripts/prepare_data.py", "--images_dir", str(MINI_IMAGES), "--labels_csv",
         str(MINI_KAGGLE_CSV), "--output_dir", str(tmp_path / "prepared"), "--push_to_hub",
         "--hub_dataset_id", "test-user/nih-mini"],
        env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "run"
    # The quickstart run with one of ViT-Tiny's 12 blocks: the round trip does not depend on the depth (timm
    # rebuilds it from the pushed config's model_args), and the training costs a tenth of the CPU.
    config = tmp_path / "quickstart-1-block.yaml"
    quickstart = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    config.write_text(yaml.safe_dump({**quickstart, "model_kwargs": {"depth": 1}}))
    result = run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_config.yaml",
         "scripts/train.py", "--config", str(config), "--dataset_name", "test-user/nih-mini",
         "--images_dir", "", "--labels_csv", "", "--output_dir", str(out), "--num_train_epochs", "1",
         "--report_to", "none", "--push_to_hub", "--hub_model_id", "test-user/cxr-quick"],
        env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    from huggingface_hub import HfApi, hf_hub_download

    files = set(HfApi().list_repo_files("test-user/cxr-quick"))
    assert {"model.safetensors", "config.json", "README.md", "training_curves.png", "test_results.json"} <= files
    card = open(hf_hub_download("test-user/cxr-quick", "README.md")).read()
    meta = card_metadata(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert meta["datasets"] == ["test-user/nih-mini"] and "license" in meta and "timm" in meta["tags"]
    test_results = json.loads((out / "test_results.json").read_text())
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["Macro ROC-AUC (14 findings)"] == round(test_results["test_auc_macro"], 4)
    assert f"**{test_results['test_auc_macro']:.4f}**" in card
    assert "Not for clinical use" in card and "patient-wise" in card
    for label in LABELS:
        assert f"| {label}" in card

    local = AutoModelForImageClassification.from_pretrained(out).eval()
    remote = AutoModelForImageClassification.from_pretrained("test-user/cxr-quick").eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(local(pixel_values=pixels).logits, remote(pixel_values=pixels).logits)
        from_timm = timm.create_model("hf-hub:test-user/cxr-quick", pretrained=True).eval()
        # bitwise-equal weights; the two forward paths may differ in the last float bits
        local_weights = {k.removeprefix("timm_model."): v for k, v in local.state_dict().items()}
        assert all(torch.equal(v, local_weights[k]) for k, v in from_timm.state_dict().items())
        torch.testing.assert_close(from_timm(pixels), local(pixel_values=pixels).logits, rtol=1e-5, atol=1e-6)

    # the standalone push script: same folder to a second repo
    result = run([sys.executable, "scripts/push_to_hub.py", "--model_dir", str(out), "--repo_id", "cxr-again"], env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model.safetensors" in set(HfApi().list_repo_files("test-user/cxr-again"))
