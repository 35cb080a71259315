import numpy as np
import pytest
import torch
from conftest import TEST_DATA
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from cxr_vit.constants import LABELS
from cxr_vit.modeling import PretrainedWeightsUnavailable, create_model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", pretrained=False, image_size=64).eval()
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    return model, folder


def test_config_is_multilabel_with_canonical_labels(saved_model):
    model, folder = saved_model
    assert model.config.problem_type == "multi_label_classification"
    assert [model.config.id2label[i] for i in range(15)] == list(LABELS)
    assert model.config.label2id["No Finding"] == 10
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_stock_auto_model_reloads_identical_logits(saved_model):
    model, folder = saved_model
    reloaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(reloaded).__name__ == "TimmWrapperForImageClassification"
    assert reloaded.config.id2label == model.config.id2label
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels).logits, reloaded(pixel_values=pixels).logits)


def test_pipeline_gives_15_sigmoid_scores_for_a_grayscale_png(saved_model):
    model, folder = saved_model
    path = TEST_DATA / "00000011_000.png"
    assert Image.open(path).mode == "L"
    classifier = pipeline("image-classification", model=str(folder), device="cpu")
    scores = {item["label"]: item["score"] for item in classifier(str(path), top_k=15)}
    assert set(scores) == set(LABELS)
    processor = AutoImageProcessor.from_pretrained(folder)
    pixels = processor(Image.open(path).convert("RGB"))["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64)
    with torch.no_grad():
        expected = torch.sigmoid(model(pixel_values=pixels).logits)[0].numpy()
    np.testing.assert_allclose([scores[label] for label in LABELS], expected, rtol=1e-5, atol=1e-6)
    assert not np.isclose(sum(scores.values()), 1.0)  # independent sigmoids, not a softmax


def test_pretrained_weights_never_fall_back_silently(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedWeightsUnavailable, match="--pretrained false"):
        create_model("vit_tiny_patch16_224", pretrained=True)


def test_image_size_and_timm_kwargs_reach_the_backbone():
    model = create_model("vit_tiny_patch16_224", pretrained=False, image_size=96, model_kwargs={"depth": 2})
    assert len(model.timm_model.blocks) == 2
    assert tuple(model.config.pretrained_cfg["input_size"]) == (3, 96, 96)
    assert model(pixel_values=torch.randn(1, 3, 96, 96)).logits.shape == (1, 15)


def test_the_public_api_resolves_every_name_it_lists():
    import subprocess
    import sys

    import cxr_vit

    for name in cxr_vit.__all__:
        assert getattr(cxr_vit, name) is not None, name
    # A light import stays light: the constants without torch, transformers or datasets.
    code = "import sys, cxr_vit.constants; print(any(m in sys.modules for m in ('torch', 'transformers', 'datasets')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
