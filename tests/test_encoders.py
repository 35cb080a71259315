"""Each public encoder format converts exactly: the source library's model with random weights and the timm
model built from the converted checkpoint give the same pooled features (1e-5) on the same input."""

import json

import pytest
import timm
import torch
from open_clip.timm_model import TimmModel
from open_clip.transformer import QuickGELU, VisionTransformer
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from cxr_vit.cards import render_model_card
from cxr_vit.encoders import detect_format, resolve_source
from cxr_vit.modeling import create_model, save_model
from cxr_vit.pretrained import CheckpointLoadError, CheckpointMismatchError, load_backbone_checkpoint

TOLERANCE = 1e-5


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Every parameter random (also layer scales, norms, biases that init leaves at 0/1), so no tensor hides."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return module.eval()


def timm_features(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    timm_model = getattr(model, "timm_model", model).eval()
    with torch.no_grad():
        return timm_model.forward_head(timm_model.forward_features(pixels), pre_logits=True)


def pixels(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


# ---- transformers Dinov2Model (RAD-DINO) ------------------------------------------------------------------------

DINOV2 = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14)
PREPROCESSOR = {"image_mean": [0.53, 0.53, 0.53], "image_std": [0.26, 0.26, 0.26]}  # RAD-DINO has its own
# The names of checkpoints saved before transformers 5 (RAD-DINO's), which transformers 5 renames on load.
OLD_NAMES = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
             "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense"}  # fmt: skip


def dinov2_folder(tmp_path, registers: int = 0, old_names: bool = False):
    if registers:
        source = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**DINOV2, num_register_tokens=registers))
    else:
        source = Dinov2Model(Dinov2Config(**DINOV2))
    source = randomize(source)
    state = source.state_dict()
    if old_names:
        for new, old in OLD_NAMES.items():
            state = {key.replace(new, old): value for key, value in state.items()}
    folder = tmp_path / "rad-dino"
    folder.mkdir()
    save_file({key: value.contiguous() for key, value in state.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(source.config.to_json_string())
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return source, folder


@pytest.mark.parametrize("registers, old_names", [(0, True), (0, False), (4, False)])
def test_transformers_dinov2_converts_exactly(tmp_path, registers, old_names):
    source, folder = dinov2_folder(tmp_path, registers, old_names)
    model = create_model(str(folder), pretrained=False)  # architecture read from config.json
    init = model.config.cxr_vit_initialization
    assert init["format"] == "transformers-dinov2" and init["missing"] == []
    pretrained_cfg = model.config.pretrained_cfg  # the encoder's size and normalization, for the preprocessing
    assert tuple(pretrained_cfg["input_size"]) == (3, DINOV2["image_size"], DINOV2["image_size"])
    assert list(pretrained_cfg["mean"]) == PREPROCESSOR["image_mean"] and list(pretrained_cfg["std"]) == [0.26] * 3
    assert model.config.architecture == ("vit_base_patch14_reg4_dinov2" if registers else "vit_base_patch14_dinov2")
    x = pixels(DINOV2["image_size"])
    with torch.no_grad():
        expected = source(pixel_values=x).pooler_output
    torch.testing.assert_close(timm_features(model, x), expected, atol=TOLERANCE, rtol=0)


def test_dinov2_position_embeddings_are_resampled_to_another_size(tmp_path):
    _, folder = dinov2_folder(tmp_path)
    model = create_model("vit_base_patch14_dinov2", pretrained=False, image_size=28, pretrained_weights=str(folder),
                         model_kwargs={"embed_dim": 64, "depth": 2, "num_heads": 4})  # fmt: skip
    assert model.timm_model.pos_embed.shape == (1, 1 + 2 * 2, 64)
    assert model.config.cxr_vit_initialization["missing"] == []
    save_model(model, tmp_path / "saved")  # the card names the checkpoint and its format
    assert "`rad-dino` (transformers Dinov2Model (RAD-DINO))" in render_model_card(tmp_path / "saved").text


# ---- open_clip with a timm trunk (BiomedCLIP) ---------------------------------------------------------------------


def test_open_clip_timm_trunk_converts_exactly(tmp_path):
    # BiomedCLIP's image tower: open_clip's TimmModel(vit_base_patch16_224, pool="", proj="linear"), here tiny
    tower = randomize(TimmModel("vit_tiny_patch16_224", embed_dim=32, image_size=224, pool="", proj="linear"))
    state = {f"visual.{key}": value for key, value in tower.state_dict().items()}
    state["text.token_embedding.weight"] = torch.zeros(10, 32)  # the text tower is left out
    torch.save({"state_dict": state}, tmp_path / "open_clip_pytorch_model.bin")
    config = {"model_cfg": {"embed_dim": 32, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224",
                                                            "image_size": 224}}}  # fmt: skip
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    model = create_model(str(tmp_path), pretrained=False)
    assert model.config.cxr_vit_initialization["format"] == "open_clip-timm"
    x = pixels(224)
    with torch.no_grad():
        expected = tower.trunk(x)  # the pooled features, before the CLIP projection
    torch.testing.assert_close(timm_features(model, x), expected, atol=TOLERANCE, rtol=0)


# ---- OpenAI CLIP (CheXzero) ----------------------------------------------------------------------------------------


def test_openai_clip_tower_converts_exactly(tmp_path):
    # OpenAI's CLIP ViT layout (CheXzero's ViT-B/32), from open_clip's own VisionTransformer with QuickGELU
    tower = randomize(VisionTransformer(image_size=64, patch_size=32, width=128, layers=2, heads=2, mlp_ratio=4.0,
                                        output_dim=16, act_layer=QuickGELU))  # fmt: skip
    state = {f"visual.{key}": value for key, value in tower.state_dict().items()}
    state["positional_embedding"] = torch.zeros(77, 16)  # the text tower's keys sit beside it
    torch.save(state, tmp_path / "chexzero.pt")
    model = create_model(str(tmp_path / "chexzero.pt"), pretrained=False)  # shapes say the architecture
    assert model.config.architecture == "vit_base_patch16_clip_quickgelu_224"
    assert model.config.cxr_vit_initialization["format"] == "openai-clip"
    tower.proj = None  # the pooled features, before the CLIP projection
    x = pixels(64)
    with torch.no_grad():
        expected = tower(x)
    torch.testing.assert_close(timm_features(model, x), expected, atol=TOLERANCE, rtol=0)


# ---- timm-style (MAE, EVA) and unknown layouts --------------------------------------------------------------------


def test_timm_style_checkpoint_keeps_its_format_name(tmp_path):
    source = randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2))
    torch.save({"model": source.state_dict()}, tmp_path / "mae.pth")
    target = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
    result = load_backbone_checkpoint(target, tmp_path / "mae.pth")
    assert result.format == "timm" and "format timm" in result.summary()
    x = pixels(32)
    torch.testing.assert_close(timm_features(target, x), timm_features(source, x), atol=TOLERANCE, rtol=0)


def test_unknown_layout_error_shows_its_keys(tmp_path):
    torch.save({"net.conv_a.weight": torch.zeros(8, 3, 3, 3), "net.fc_z.weight": torch.zeros(2, 8)}, tmp_path / "x.pt")
    target = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)sample of the checkpoint's keys: net\.conv_a\.weight"):
        load_backbone_checkpoint(target, tmp_path / "x.pt")
    assert detect_format({"net.conv_a.weight": torch.zeros(1)}).name == "timm"


def test_timm_style_file_alone_asks_for_the_architecture(tmp_path):
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1).state_dict(), tmp_path / "m.pth")
    with pytest.raises(CheckpointLoadError, match="--model_name"):
        create_model(str(tmp_path / "m.pth"), pretrained=False)


def test_a_hub_repo_of_an_encoder_is_downloaded(tmp_path, monkeypatch):
    from hub_server import HubServer, point_hf_clients_at
    from huggingface_hub import HfApi, constants

    source, folder = dinov2_folder(tmp_path)
    with HubServer(tmp_path / "hub") as server:
        point_hf_clients_at(server.endpoint, monkeypatch, token=server.token, cache_dir=tmp_path / "hf-home")
        api = HfApi(endpoint=server.endpoint, token=server.token)
        api.create_repo("lab/rad-dino-tiny")
        api.upload_folder(repo_id="lab/rad-dino-tiny", folder_path=str(folder))
        assert resolve_source("lab/rad-dino-tiny").config["model_type"] == "dinov2"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # server gone: from the cache
    model = create_model("lab/rad-dino-tiny", pretrained=False)
    assert model.config.cxr_vit_initialization["checkpoint"] == "lab/rad-dino-tiny"
    x = pixels(DINOV2["image_size"])
    with torch.no_grad():
        expected = source(pixel_values=x).pooler_output
    torch.testing.assert_close(timm_features(model, x), expected, atol=TOLERANCE, rtol=0)


def test_a_missing_checkpoint_is_named(tmp_path):
    from cxr_vit.encoders import EncoderNotFoundError

    with pytest.raises(EncoderNotFoundError, match="missing.pth: no such file or folder"):
        create_model("vit_tiny_patch16_224", pretrained=False, pretrained_weights=str(tmp_path / "missing.pth"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderNotFoundError, match="none of model.safetensors"):
        create_model(str(tmp_path / "empty"), pretrained=False)
