"""Each public encoder format converts exactly: the source library's model with random weights and the timm
model built from the converted checkpoint give the same pooled features (1e-5) on the same input."""

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from open_clip.timm_model import TimmModel
from open_clip.transformer import QuickGELU, VisionTransformer
from safetensors.torch import save_file
from transformers import (
    AutoModelForImageClassification,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

from cxr_vit.cards import render_model_card
from cxr_vit.encoders import detect_format, resolve_source
from cxr_vit.modeling import create_model, save_model
from cxr_vit.pretrained import (
    CheckpointLoadError,
    CheckpointMismatchError,
    CheckpointResampledError,
    load_backbone_checkpoint,
)

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
    card = render_model_card(tmp_path / "saved").text
    assert "`rad-dino` (transformers Dinov2Model (RAD-DINO))" in card
    assert "another shape than the checkpoint's: pos_embed: (1, 17, 64) -> (1, 5, 64)." in card


# ---- open_clip with a timm trunk (BiomedCLIP) ---------------------------------------------------------------------


CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def test_open_clip_timm_trunk_converts_exactly(tmp_path):
    # BiomedCLIP's image tower: open_clip's TimmModel(vit_base_patch16_224, pool="", proj="linear"), here tiny
    tower = randomize(TimmModel("vit_tiny_patch16_224", embed_dim=32, image_size=224, pool="", proj="linear"))
    state = {f"visual.{key}": value for key, value in tower.state_dict().items()}
    state["text.token_embedding.weight"] = torch.zeros(10, 32)  # the text tower is left out
    torch.save({"state_dict": state}, tmp_path / "open_clip_pytorch_model.bin")
    config = {"model_cfg": {"embed_dim": 32, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224",
                                                            "image_size": 224}},
              "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD}}  # fmt: skip
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    # open_clip's Hub repos also ship a config.json (transformers' CLIP config), which says nothing of the trunk
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
    model = create_model(str(tmp_path), pretrained=False)
    assert model.config.cxr_vit_initialization["format"] == "open_clip-timm"
    pretrained_cfg = model.config.pretrained_cfg  # open_clip's preprocess_cfg, not the trunk's ImageNet values
    assert list(pretrained_cfg["mean"]) == CLIP_MEAN and list(pretrained_cfg["std"]) == CLIP_STD
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


# ---- EVA-X -----------------------------------------------------------------------------------------------------------
# A compact EVA-X network written from its published code (github.com/hustvl/EVA-X, classification/models/
# models_eva.py): EVA-02's names and forward, as its fine-tuning builds it (--use_mean_pooling: fc_norm of the mean
# patch token), with random weights. Ti/S: one qkv projection and xformers' packed SwiGLU (w12 = [w1; w2], w3);
# B: q/k/v projections and SwiGLU w1/w2/w3 with ffn_ln. Both: q_bias and v_bias (no k bias), rotary embeddings
# (VisionRotaryEmbeddingFast: positions scaled by pt_seq_len / grid) on all but the class token, LayerNorm eps 1e-6.


class EvaXRope(torch.nn.Module):
    def __init__(self, head_dim: int, pt_seq_len: int, grid: int):
        super().__init__()
        dim = head_dim // 2
        freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        freqs = torch.einsum("i,f->if", torch.arange(grid) / grid * pt_seq_len, freqs).repeat_interleave(2, -1)
        freqs = torch.cat([freqs[:, None, :].expand(grid, grid, -1), freqs[None, :, :].expand(grid, grid, -1)], -1)
        self.register_buffer("freqs_cos", freqs.cos().view(grid * grid, -1))
        self.register_buffer("freqs_sin", freqs.sin().view(grid * grid, -1))

    def forward(self, t):
        pairs = t.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2)
        return t * self.freqs_cos + rotated * self.freqs_sin


class EvaXAttention(torch.nn.Module):
    def __init__(self, dim: int, heads: int, separate: bool, rope: EvaXRope):
        super().__init__()
        self.heads, self.separate, self.rope = heads, separate, rope
        if separate:
            self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(dim, dim, bias=False) for _ in range(3))
        else:
            self.qkv = torch.nn.Linear(dim, dim * 3, bias=False)
        self.q_bias, self.v_bias = torch.nn.Parameter(torch.zeros(dim)), torch.nn.Parameter(torch.zeros(dim))
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        if self.separate:
            q = F.linear(x, self.q_proj.weight, self.q_bias)
            k, v = F.linear(x, self.k_proj.weight), F.linear(x, self.v_proj.weight, self.v_bias)
        else:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            q, k, v = F.linear(x, self.qkv.weight, bias).chunk(3, -1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        q, k = (torch.cat((t[:, :, :1], self.rope(t[:, :, 1:])), -2) for t in (q, k))
        attn = (q * q.shape[-1] ** -0.5 @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).flatten(2))


class EvaXSwiGLU(torch.nn.Module):
    def __init__(self, dim: int, hidden: int, separate: bool):
        super().__init__()
        self.separate = separate
        if separate:
            self.w1, self.w2 = torch.nn.Linear(dim, hidden), torch.nn.Linear(dim, hidden)
            self.ffn_ln = torch.nn.LayerNorm(hidden, eps=1e-6)
        else:
            self.w12 = torch.nn.Linear(dim, 2 * hidden)
        self.w3 = torch.nn.Linear(hidden, dim)

    def forward(self, x):
        if self.separate:
            return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))
        gate, value = self.w12(x).chunk(2, -1)
        return self.w3(F.silu(gate) * value)


class EvaXBlock(torch.nn.Module):
    def __init__(self, dim: int, heads: int, separate: bool, rope: EvaXRope):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim, eps=1e-6), torch.nn.LayerNorm(dim, eps=1e-6)
        self.attn = EvaXAttention(dim, heads, separate, rope)
        self.mlp = EvaXSwiGLU(dim, int(dim * 4 * 2 / 3), separate)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EvaX(torch.nn.Module):
    def __init__(self, separate: bool, pt_seq_len: int, dim=32, heads=2, depth=2, patch=16, grid=4, classes=14):
        super().__init__()
        self.patch_embed = torch.nn.Module()
        self.patch_embed.proj = torch.nn.Conv2d(3, dim, patch, patch)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.rope = EvaXRope(dim // heads, pt_seq_len, grid)
        self.blocks = torch.nn.ModuleList(EvaXBlock(dim, heads, separate, self.rope) for _ in range(depth))
        self.fc_norm = torch.nn.LayerNorm(dim, eps=1e-6)
        self.head = torch.nn.Linear(dim, classes)

    def features(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(len(x), -1, -1), x), 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.fc_norm(x[:, 1:].mean(1))


EVA_X_LAYOUTS = {"Ti/S": dict(separate=False, pt_seq_len=4), "B": dict(separate=True, pt_seq_len=5)}


def eva_x_file(tmp_path, layout: str):
    source = randomize(EvaX(**EVA_X_LAYOUTS[layout]))
    state = dict(source.state_dict())  # with the rotary tables, also each block's copy, as EVA-X saves them
    state.update(mask_token=torch.zeros(1, 1, 32), **{"lm_head.weight": torch.zeros(8, 32)})  # pretraining only
    torch.save({"model": state}, tmp_path / "eva_x.pth")
    return source, tmp_path / "eva_x.pth"


@pytest.mark.parametrize("layout", sorted(EVA_X_LAYOUTS))
def test_eva_x_converts_exactly(tmp_path, layout):
    source, path = eva_x_file(tmp_path, layout)
    model = create_model(str(path), pretrained=False)  # the architecture read from the tensors
    init, args = model.config.cxr_vit_initialization, model.config.model_args
    assert init["format"] == "eva-x" and init["missing"] == [] and init["lossy"] == init["resampled"] == []
    assert model.config.architecture == ("eva02_base_patch14_224" if layout == "B" else "eva02_tiny_patch14_224")
    assert (args["patch_size"], args["img_size"], args["num_heads"]) == (16, 64, 2)
    assert tuple(args["ref_feat_shape"]) == (EVA_X_LAYOUTS[layout]["pt_seq_len"],) * 2
    assert model.config.pretrained_cfg["mean"] == (0.49185243,) * 3  # EVA-X's fine-tuning normalization
    x = pixels(64)
    with torch.no_grad():
        expected = source.features(x)
    torch.testing.assert_close(timm_features(model, x), expected, atol=TOLERANCE, rtol=0)
    save_model(model, tmp_path / "saved")  # a stock timm_wrapper model, the keywords in its config
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "saved")
    torch.testing.assert_close(timm_features(reloaded, x), expected, atol=TOLERANCE, rtol=0)


def test_eva_x_rotary_tables_timm_cannot_compute_stop_the_load(tmp_path):
    _, path = eva_x_file(tmp_path, "Ti/S")
    checkpoint = torch.load(path)
    checkpoint["model"]["rope.freqs_cos"] = checkpoint["model"]["rope.freqs_cos"].flip(0)  # not EVA-02's layout
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointLoadError, match="rotary tables of shape \\(16, 16\\) do not match timm's"):
        create_model(str(path), pretrained=False)


def test_eva_x_into_the_nearest_14_px_name_stops_unless_resampling_is_asked_for(tmp_path):
    """The 14-px timm EVA-02 would get the 16-px patch embedding resampled: the run stops, or says so when allowed."""
    _, path = eva_x_file(tmp_path, "B")
    arguments = dict(pretrained=False, image_size=56, pretrained_weights=str(path), model_kwargs={
        "embed_dim": 32, "num_heads": 2, "depth": 2, "ref_feat_shape": (5, 5)})  # fmt: skip
    with pytest.raises(CheckpointResampledError, match=r"patch_embed\.proj\.weight: \(32, 3, 16, 16\) -> \(32, 3, 14"):
        create_model("eva02_base_patch14_224", **arguments)
    overlay = {"pretrained_cfg_overlay": {"mean": [0.5] * 3, "std": [0.25] * 3}}  # given: wins over EVA-X's own
    arguments["model_kwargs"].update(overlay)
    model = create_model("eva02_base_patch14_224", allow_resampled_weights=True, **arguments)
    assert model.config.cxr_vit_initialization["lossy"][0].startswith("patch_embed.proj.weight: (32, 3, 16, 16)")
    assert model.timm_model.patch_embed.proj.weight.shape == (32, 3, 14, 14)  # resampled: not the source's tensor
    assert tuple(model.config.pretrained_cfg["mean"]) == (0.5,) * 3


# ---- timm-style (MAE, timm's EVA-02) and unknown layouts ----------------------------------------------------------


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
        assert resolve_source("lab/rad-dino-tiny").configs["config.json"]["model_type"] == "dinov2"
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
