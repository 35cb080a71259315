"""The fine-tuning recipe: layer-wise LR decay, weight-decay groups, the weights' EMA, intensity augmentation,
backbone families, Hub backbones and higher resolutions."""

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from training_helpers import tiny_vit_trainer
from transformers import AutoModelForImageClassification

from cxr_vit.data.gpu_augment import BatchImageTransform
from cxr_vit.data.intensity import IntensityAugment
from cxr_vit.data.transforms import eval_geometry
from cxr_vit.modeling import create_model, data_config, save_model
from cxr_vit.training.callbacks import EMA_WEIGHTS_NAME

# ---- optimizer groups ------------------------------------------------------------------------------------


def test_layer_decay_learning_rates_follow_the_decay_layer_by_layer(tmp_path):
    model = create_model("vit_tiny_patch16_224", pretrained=False, image_size=32, model_kwargs={"depth": 3})
    trainer = tiny_vit_trainer(tmp_path, model=model, learning_rate=1e-3, layer_decay=0.5, weight_decay=0.05,
                               per_device_train_batch_size=8, max_steps=3, lr_scheduler_type="constant")  # fmt: skip
    optimizer = trainer.create_optimizer()
    # timm's layers: 0 = patch/position embeddings and tokens, 1-3 = blocks (the final norm with the last), 4 = head
    by_name = {
        name: (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for name in group["param_names"]
    }
    for name, (lr, _) in by_name.items():
        if ".blocks." in name:
            layer = int(name.split(".blocks.")[1].split(".")[0]) + 1
        else:
            layer = {"timm_model.norm": 3, "timm_model.head": 4}.get(name.rsplit(".", 1)[0], 0)
        assert lr == pytest.approx(1e-3 * 0.5 ** (4 - layer)), name
    no_decay = {name for name, (_, decay) in by_name.items() if decay == 0}
    assert {"timm_model.pos_embed", "timm_model.cls_token", "timm_model.blocks.0.attn.qkv.bias"} <= no_decay
    assert "timm_model.blocks.0.norm1.weight" in no_decay and "timm_model.blocks.0.attn.qkv.weight" not in no_decay
    assert len(by_name) == len(list(model.parameters()))  # every parameter exactly once
    trainer.train()  # the schedule scales every group alike: the ratios hold after steps
    rates = sorted({group["lr"] for group in optimizer.param_groups})
    assert np.allclose(np.diff(np.log2(rates)), 1.0)


def test_without_layer_decay_position_embeddings_and_tokens_are_not_decayed(tmp_path):
    trainer = tiny_vit_trainer(tmp_path, weight_decay=0.05)
    groups = {group["group_name"]: group for group in trainer.create_optimizer().param_groups}
    assert set(groups) == {"decay", "no_decay"} and groups["decay"]["weight_decay"] == 0.05
    assert {"timm_model.pos_embed", "timm_model.cls_token"} <= set(groups["no_decay"]["param_names"])


# ---- EMA ----------------------------------------------------------------------------------------------------


def small_vit():
    return create_model("vit_tiny_patch16_224", pretrained=False, image_size=32, model_kwargs={"depth": 2})


def test_ema_weights_differ_from_the_raw_ones_and_are_what_is_saved(tmp_path):
    trainer = tiny_vit_trainer(tmp_path, model=small_vit(), per_device_train_batch_size=8, max_steps=6, ema_decay=0.5,
                               save_strategy="steps", save_steps=3, eval_strategy="steps", eval_steps=3,
                               ema_eval="both", learning_rate=1e-3)  # fmt: skip
    trainer.train()
    checkpoint = tmp_path / "checkpoint-3"
    raw, ema = load_file(checkpoint / "model.safetensors"), load_file(checkpoint / EMA_WEIGHTS_NAME)
    assert raw.keys() == ema.keys() and not all(torch.equal(raw[key], ema[key]) for key in raw)
    history = trainer.state.log_history
    assert any("eval_raw_auc_macro" in entry for entry in history)  # --ema_eval both: the raw weights too
    assert any("eval_auc_macro" in entry for entry in history)
    final = trainer.model.timm_model.state_dict()  # no best-model reload: the final EMA is the model
    averaged = trainer.ema.timm_state_dict()
    assert averaged.keys() == final.keys() and all(torch.equal(final[key], averaged[key]) for key in final)
    trainer.save_model(str(tmp_path / "saved"))
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert saved.keys() == final.keys() and all(torch.equal(saved[key], final[key].cpu()) for key in saved)
    assert not (tmp_path / "saved" / EMA_WEIGHTS_NAME).exists()  # the model is the EMA; no second copy


def test_best_checkpoint_is_reloaded_with_its_ema_weights(tmp_path):
    trainer = tiny_vit_trainer(tmp_path, model=small_vit(), per_device_train_batch_size=8, max_steps=4, ema_decay=0.5,
                               save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2,
                               load_best_model_at_end=True, metric_for_best_model="auc_macro")  # fmt: skip
    trainer.train()
    best = load_file(f"{trainer.state.best_model_checkpoint}/{EMA_WEIGHTS_NAME}")
    model = trainer.model.timm_model.state_dict()
    assert best.keys() == model.keys() and all(torch.equal(model[key].cpu(), best[key]) for key in model)


# ---- augmentation -------------------------------------------------------------------------------------------


def test_intensity_augmentation_runs_on_the_batch_path_of_training_only():
    config = data_config(create_model("vit_tiny_patch16_224", pretrained=False, image_size=32))
    squares = torch.randint(0, 256, (6, eval_geometry(config).resize_size, eval_geometry(config).resize_size),
                            dtype=torch.uint8)  # fmt: skip
    plain = BatchImageTransform(config)
    augmented = BatchImageTransform(config, intensity=IntensityAugment.from_args("all", 10))
    assert (
        plain.intensity is None
        and BatchImageTransform(config, intensity=IntensityAugment(magnitude=0)).intensity is None
    )
    torch.manual_seed(0)
    without = plain(squares, training=True)
    torch.manual_seed(0)
    with_intensity = augmented(squares, training=True)
    assert without.shape == with_intensity.shape and not torch.equal(without, with_intensity)
    assert torch.equal(plain(squares, training=False), augmented(squares, training=False))


# ---- backbones --------------------------------------------------------------------------------------------

FAMILIES = {
    "vit": ("vit_tiny_patch16_224", 32, {"depth": 2}),
    "deit": ("deit_tiny_patch16_224", 32, {"depth": 2}),
    "swin": ("swin_tiny_patch4_window7_224", 56, {"depths": (1, 1, 1, 1), "embed_dim": 24, "num_heads": (1, 1, 1, 1)}),
    "convnext": ("convnext_atto", 32, {"depths": (1, 1, 1, 1)}),
    "eva": ("eva02_tiny_patch14_224", 28, {"depth": 2}),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_backbone_family_trains_a_step_and_reloads_with_stock_transformers(tmp_path, family):
    name, size, kwargs = FAMILIES[family]
    model = create_model(name, pretrained=False, image_size=size, model_kwargs=kwargs)
    assert tuple(model.config.pretrained_cfg["input_size"]) == (3, size, size)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    trainer = tiny_vit_trainer(tmp_path, model=model, cache_count=8, per_device_train_batch_size=4, max_steps=1,
                               warmup_steps=0)  # fmt: skip
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    save_model(model, tmp_path / "saved")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "saved").eval()
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, model.eval()(pixel_values=pixels).logits)


def test_a_timm_repo_on_the_hub_is_a_backbone(tmp_path, monkeypatch):
    from hub_server import HubServer, point_hf_clients_at

    with HubServer(tmp_path / "hub") as hub:
        point_hf_clients_at(hub.endpoint, monkeypatch, token=hub.token, cache_dir=tmp_path / "hf-home")
        source = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=1000)
        timm.models.push_to_hf_hub(source, "test-user/vit-tiny-research")
        model = create_model("hf-hub:test-user/vit-tiny-research", pretrained=True, model_kwargs={"depth": 2})
    loaded = model.timm_model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("head."):  # the 1000-class head gives way to the 15-way one
            assert torch.equal(loaded[key], value), key
    assert loaded["head.weight"].shape == (15, 192)


# ---- resolution -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "square"), [(384, 426), (448, 497), (512, 568)])
def test_higher_resolutions_resample_position_embeddings_and_keep_one_geometry(tmp_path, size, square):
    """A 224-px checkpoint into a size-px model: position embeddings resampled; the cache side, the eval crop and
    Grad-CAM's grid follow the size."""
    from cxr_vit.evaluation.heatmaps import grad_cam

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, num_classes=1000)
    torch.save({"model": source.state_dict()}, tmp_path / "research.pth")
    model = create_model("vit_tiny_patch16_224", image_size=size, model_kwargs={"depth": 1},
                         pretrained_weights=str(tmp_path / "research.pth"))  # fmt: skip
    grid = size // 16
    assert model.timm_model.pos_embed.shape == (1, 1 + grid * grid, 192)
    assert model.config.cxr_vit_initialization["checkpoint"] == "research.pth"
    geometry = eval_geometry(data_config(model))
    assert (geometry.input_size, geometry.resize_size) == (size, square)
    inputs = BatchImageTransform(data_config(model))(torch.zeros(1, square, square, dtype=torch.uint8), training=False)
    maps = grad_cam(model.eval(), inputs, torch.tensor([[0, 4]]))
    assert inputs.shape == (1, 3, size, size) and maps.shape == (1, 2, size, size)


# ---- test-time augmentation and ensembles ------------------------------------------------------------------


def test_tta_and_ensembles_are_deterministic_and_shaped(tmp_path):
    from PIL import Image

    from cxr_vit.inference import Classifier, Ensemble

    torch.manual_seed(0)
    small = create_model("vit_tiny_patch16_224", pretrained=False, image_size=32, model_kwargs={"depth": 1})
    other = create_model("vit_tiny_patch16_224", pretrained=False, image_size=48, model_kwargs={"depth": 1})
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (70, 60), dtype=np.uint8)) for i in range(3)]
    plain = Classifier(small, device="cpu").predict_images(images)
    five = Classifier(small, device="cpu", tta=5)
    averaged = five.predict_images(images)
    assert averaged.shape == (3, 15) and np.array_equal(averaged, five.predict_images(images))  # fixed views
    views = [torch.sigmoid(five.logits(five.squares(images), view)).double().numpy() for view in range(5)]
    np.testing.assert_allclose(averaged, np.mean(views, axis=0))
    np.testing.assert_array_equal(views[0], plain)  # view 0 is the plain eval crop
    assert not np.allclose(views[1], views[0])  # a corner is another view
    with pytest.raises(ValueError, match="tta must be 1"):
        Classifier(small, device="cpu", tta=6)
    ensemble = Ensemble([Classifier(small, device="cpu"), Classifier(other, device="cpu", tta=2)])
    together = ensemble.predict_images(images)
    expected = (plain + Classifier(other, device="cpu", tta=2).predict_images(images)) / 2
    np.testing.assert_allclose(together, expected)
    assert np.array_equal(together, ensemble.predict_images(images))


@pytest.mark.slow
def test_448_px_end_to_end_from_a_224_px_research_checkpoint(tmp_path, prepared_mini):
    """train.py at 448 px from a 224-px checkpoint under "model" with a 1000-class head, then predict.py with
    heatmaps: the cache holds 497-px squares, the crop is 448, Grad-CAM's grid is 28 x 28 patches."""
    import subprocess
    import sys

    import yaml
    from conftest import REPO, TEST_DATA
    from PIL import Image

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, num_classes=1000)
    torch.save({"model": source.state_dict()}, tmp_path / "research.pth")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model_kwargs": {"depth": 1}}))
    command = [sys.executable, "scripts/train.py", "--config", str(config), "--dataset_name", str(prepared_mini),
               "--model_name", "vit_tiny_patch16_224", "--pretrained_weights", str(tmp_path / "research.pth"),
               "--image_size", "448", "--output_dir", str(tmp_path / "run"), "--image_cache_dir", str(tmp_path / "c"),
               "--max_train_samples", "16", "--max_eval_samples", "8", "--max_steps", "2",
               "--per_device_train_batch_size", "8", "--report_to", "none"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "initialised the backbone from" in result.stderr and "resampled" in result.stderr
    assert np.load(tmp_path / "c" / "train-497px-bicubic" / "images.npy", mmap_mode="r").shape == (16, 497, 497)
    card = (tmp_path / "run" / "README.md").read_text()  # the card names the checkpoint, not ImageNet weights
    assert "research checkpoint `research.pth`" in card and "(ImageNet weights)" not in card
    xray = str(TEST_DATA / "00000011_000.png")
    predict = [sys.executable, "scripts/predict.py", "--model", str(tmp_path / "run"), xray, "--output",
               str(tmp_path / "predictions.csv"), "--heatmaps", str(tmp_path / "heatmaps")]  # fmt: skip
    result = subprocess.run(predict, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(next((tmp_path / "heatmaps").iterdir())).size == (4 * 256, 256 + 32)


# What each backbone family's heatmaps are: supported explainers work, the others are refused by name.
EXPLAINABLE = {
    "vit": {"gradcam", "rollout", "grad_rollout"},
    "deit": {"gradcam", "rollout", "grad_rollout"},
    "eva": {"gradcam"},
    "swin": set(),
    "convnext": set(),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_has_its_listed_explainers_and_refuses_the_others(family):
    from cxr_vit.evaluation.explainers import EXPLAINERS, ExplainerError, get_explainer, resolve_explainer

    name, size, kwargs = FAMILIES[family]
    model = create_model(name, pretrained=False, image_size=size, model_kwargs=kwargs).eval()
    for explainer in sorted(EXPLAINERS):
        if explainer in EXPLAINABLE[family]:
            chosen, _ = resolve_explainer(model, explainer)
            maps = get_explainer(chosen)(model, torch.randn(2, 3, size, size), torch.tensor([[0], [4]]))
            assert maps.shape == (2, 1, size, size) and 0 <= maps.min() <= maps.max() <= 1
        else:
            with pytest.raises(ExplainerError, match=name):
                resolve_explainer(model, explainer)
