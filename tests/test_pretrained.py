"""Loading local research checkpoints into the backbone: layouts, prefixes, heads, position embeddings, errors."""

from __future__ import annotations

import argparse
import copy
import functools

import pytest
import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed

from cxr_vit.modeling import create_model
from cxr_vit.pretrained import (
    CheckpointLoadError,
    CheckpointMismatchError,
    CheckpointResampledError,
    load_backbone_checkpoint,
)

VIT = "vit_tiny_patch16_224"
TINY = {"depth": 2}
HEAD = ["head.weight", "head.bias"]


def source_vit(image_size: int = 32, num_classes: int = 1000, **kwargs) -> torch.nn.Module:
    """The research model whose weights we save: another head, possibly another resolution."""
    return copy.deepcopy(_built(("timm", image_size, num_classes, tuple(sorted(kwargs.items())))))


def target_vit(image_size: int = 32, **kwargs):
    """A fresh 15-class wrapper to load into."""
    return copy.deepcopy(_built(("wrapper", image_size, 15, tuple(sorted(kwargs.items())))))


@functools.cache
def _built(spec):
    """Models are built once per configuration and copied: timm's weight init is most of these tests' time."""
    kind, image_size, num_classes, kwargs = spec
    torch.manual_seed(1 if kind == "timm" else 2)  # the source's weights unlike the target's
    if kind == "timm":
        return timm.create_model(
            VIT, pretrained=False, num_classes=num_classes, img_size=image_size, **TINY, **dict(kwargs)
        )
    return create_model(VIT, pretrained=False, image_size=image_size, model_kwargs={**TINY, **dict(kwargs)})


def save(checkpoint, path):
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(checkpoint, path)
    else:
        torch.save(checkpoint, path)
    return path


def assert_backbone_equal(timm_model, source_state, skip=()):
    for key, value in timm_model.state_dict().items():
        if not key.startswith("head.") and key not in skip:
            assert torch.equal(value, source_state[key]), key


def prefixed(state_dict, prefix):
    return {prefix + key: value for key, value in state_dict.items()}


# file name -> (checkpoint from a state dict, where the loader should find it, prefixes it should strip)
LAYOUTS = {
    "model.pth": (lambda sd: {"model": sd, "epoch": 7}, "model", []),
    "top.safetensors": (lambda sd: sd, None, []),
    "ddp.bin": (lambda sd: {"state_dict": prefixed(sd, "module.")}, "state_dict", ["module."]),
    "nested.pt": (lambda sd: {"model": {"module": prefixed(sd, "backbone.")}}, "model.module", ["backbone."]),
    "lightning.ckpt": (lambda sd: {"state_dict": prefixed(sd, "model.encoder.")}, "state_dict", ["model.", "encoder."]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_1000_class_checkpoint_loads_every_backbone_tensor(tmp_path, layout):
    wrap, container, prefixes = LAYOUTS[layout]
    source = source_vit().state_dict()
    path = save(wrap(source), tmp_path / layout)
    model = target_vit()
    head_before = {k: v.clone() for k, v in model.timm_model.state_dict().items() if k in HEAD}

    result = load_backbone_checkpoint(model.timm_model, path)

    assert_backbone_equal(model.timm_model, source)
    for key, value in head_before.items():  # our 15-class head stays as initialised
        assert torch.equal(model.timm_model.state_dict()[key], value)
    assert result.container == container and result.stripped_prefixes == prefixes
    assert sorted(result.dropped_head) == sorted(HEAD) and sorted(result.missing_head) == sorted(HEAD)
    assert result.missing == [] and result.unexpected == [] and result.mismatched == []
    assert len(result.loaded) == len(source) - 2
    assert "30 of its tensors fit the model" in result.summary() and "head.weight" in result.summary()


def test_wrapper_is_unwrapped_and_a_matching_head_is_loaded(tmp_path):
    source = source_vit(num_classes=15).state_dict()
    model = target_vit()
    result = load_backbone_checkpoint(model, save({"model": source}, tmp_path / "ft.pth"))
    assert result.dropped_head == [] and result.missing_head == []
    for key, value in model.timm_model.state_dict().items():
        assert torch.equal(value, source[key]), key


@pytest.mark.parametrize("use_timm_filter", [True, False])
@pytest.mark.parametrize("kwargs", [{}, {"reg_tokens": 2}, {"reg_tokens": 2, "no_embed_class": True}])
def test_pos_embed_resampled_from_224_to_another_grid(tmp_path, use_timm_filter, kwargs):
    """A 224/16 checkpoint (14x14 grid) into a 64/16 model (4x4): prefix-token rows kept, the grid resampled."""
    source = source_vit(image_size=224, **kwargs)
    model = target_vit(image_size=64, **kwargs)
    path = save({"model": source.state_dict()}, tmp_path / "224.pth")

    result = load_backbone_checkpoint(model.timm_model, path, use_timm_filter=use_timm_filter)

    num_prefix = 0 if source.no_embed_class else source.num_prefix_tokens
    expected = resample_abs_pos_embed(source.pos_embed.detach(), [4, 4], num_prefix_tokens=num_prefix)
    loaded = model.timm_model.pos_embed.detach()
    assert loaded.shape == (1, 16 + num_prefix, 192)
    torch.testing.assert_close(loaded, expected)
    assert torch.equal(loaded[:, :num_prefix], source.pos_embed.detach()[:, :num_prefix])
    assert_backbone_equal(model.timm_model, source.state_dict(), skip={"pos_embed"})
    assert result.resampled == [f"pos_embed: {tuple(source.pos_embed.shape)} -> {tuple(loaded.shape)}"]
    assert result.missing == []
    assert (result.timm_filter is not None) == use_timm_filter


def test_a_patch_embedding_resampled_to_another_patch_size_stops_the_load(tmp_path):
    """timm's filter resamples a 16-px patch embedding for an 8-px model: the features are no longer the source's,
    so the load stops (naming the tensor) unless resampling is asked for, and then it is recorded."""
    path = save({"model": source_vit(image_size=32).state_dict()}, tmp_path / "p16.pth")
    model = target_vit(image_size=32, patch_size=8)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    change = r"patch_embed\.proj\.weight: \(192, 3, 16, 16\) -> \(192, 3, 8, 8\)"
    with pytest.raises(CheckpointResampledError, match=change + r".*nothing was loaded.*--allow_resampled_weights"):
        load_backbone_checkpoint(model.timm_model, path)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())  # untouched

    result = load_backbone_checkpoint(model.timm_model, path, allow_resampled=True)
    filter_fn = "timm.models.vision_transformer.checkpoint_filter_fn"
    assert result.lossy == [f"patch_embed.proj.weight: (192, 3, 16, 16) -> (192, 3, 8, 8) ({filter_fn})"]
    assert result.resampled == ["pos_embed: (1, 5, 192) -> (1, 17, 192)"]  # the 2x2 grid becomes 4x4
    assert "RESAMPLED, not the checkpoint's values (1): patch_embed.proj.weight" in result.summary()


def test_a_reshape_that_keeps_every_value_is_recorded_and_allowed(tmp_path):
    """An old linear patch projection (192, 3*16*16) becomes timm's conv weight by a reshape: exact, so it loads."""
    source = source_vit().state_dict()
    flat = {**source, "patch_embed.proj.weight": source["patch_embed.proj.weight"].flatten(1)}
    model = target_vit()
    result = load_backbone_checkpoint(model.timm_model, save({"model": flat}, tmp_path / "linear_patch.pth"))
    assert result.reshaped == ["patch_embed.proj.weight: (192, 768) -> (192, 3, 16, 16)"] and result.lossy == []
    assert "reshaped, values kept (1): patch_embed.proj.weight" in result.summary()
    assert_backbone_equal(model.timm_model, source)


def test_mae_pretraining_checkpoint(tmp_path):
    """MAE's file: encoder under ``model`` at 224 px, plus mask token and decoder, no head (timm's filter)."""
    source = source_vit(image_size=224, num_classes=0)
    state = dict(source.state_dict())
    state["mask_token"] = torch.zeros(1, 1, 128)
    state["decoder_embed.weight"] = torch.zeros(128, 192)
    state["decoder_pos_embed"] = torch.zeros(1, 197, 128)
    model = target_vit(image_size=32)

    result = load_backbone_checkpoint(model.timm_model, save({"model": state}, tmp_path / "mae.pth"))

    assert result.timm_filter == "timm.models.vision_transformer.checkpoint_filter_fn"
    assert_backbone_equal(model.timm_model, source.state_dict(), skip={"pos_embed"})
    assert sorted(result.unexpected) == ["decoder_embed.weight", "decoder_pos_embed"]  # the filter drops mask_token
    assert sorted(result.missing_head) == sorted(HEAD) and result.missing == []


def test_unrelated_checkpoint_raises_with_the_missing_keys(tmp_path):
    convnext = timm.create_model("convnext_atto", pretrained=False, depths=(1, 1, 1, 1))
    path = save(convnext.state_dict(), tmp_path / "convnext.safetensors")
    model = target_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.0\.attn\.qkv\.weight") as info:
        load_backbone_checkpoint(model.timm_model, path)
    assert "unexpected (56): head.fc.bias" in str(info.value) and "nothing was loaded" in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_max_missing_decides_how_much_may_stay_random(tmp_path):
    shallow = timm.create_model(VIT, pretrained=False, img_size=32, depth=1)  # no blocks.1
    path = save({"model": shallow.state_dict()}, tmp_path / "shallow.pth")
    message = r"leave 12 of the model's 30 backbone tensors unloaded \(max_missing=4\)"
    with pytest.raises(CheckpointMismatchError, match=message):
        load_backbone_checkpoint(target_vit().timm_model, path)
    result = load_backbone_checkpoint(target_vit().timm_model, path, max_missing=12)
    assert len(result.missing) == 12 and all(key.startswith("blocks.1.") for key in result.missing)


def test_explicit_container_and_clear_errors(tmp_path):
    source = source_vit().state_dict()
    path = save({"model": {"a": torch.zeros(1)}, "teacher": {"backbone": source}}, tmp_path / "dino.pth")
    result = load_backbone_checkpoint(target_vit().timm_model, path, container="teacher.backbone")
    assert result.container == "teacher.backbone" and result.missing == []
    with pytest.raises(ValueError, match=r"no 'student' in the checkpoint at the top level: \['model', 'teacher'\]"):
        load_backbone_checkpoint(target_vit().timm_model, path, container="student")

    pickled = save({"model": source, "args": argparse.Namespace(lr=1.0)}, tmp_path / "with_args.pth")
    with pytest.raises(ValueError, match="weights_only=False .* save only its state dict"):
        load_backbone_checkpoint(target_vit().timm_model, pickled)
    with pytest.raises(CheckpointLoadError, match="no checkpoint file at"):
        load_backbone_checkpoint(target_vit().timm_model, tmp_path / "absent.pth")


FAMILIES = {
    "deit": ("deit_tiny_patch16_224", 32, {"depth": 2}),
    "swin": ("swin_tiny_patch4_window7_224", 56, {"depths": (1, 1, 1, 1), "embed_dim": 24}),
    "convnext": ("convnext_atto", None, {"depths": (1, 1, 1, 1)}),
    "eva02": ("eva02_tiny_patch14_224", 28, {"depth": 2}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_other_families_round_trip_with_an_imagenet_head(tmp_path, family):
    name, size, kwargs = FAMILIES[family]
    size_kwargs = {"img_size": size} if size else {}
    torch.manual_seed(1)
    source = timm.create_model(name, pretrained=False, num_classes=1000, **size_kwargs, **kwargs).state_dict()
    model = create_model(name, pretrained=False, image_size=size, model_kwargs=kwargs)
    result = load_backbone_checkpoint(model.timm_model, save({"state_dict": source}, tmp_path / "in1k.pth"))
    head = {k for k in model.timm_model.state_dict() if k.startswith(model.timm_model.pretrained_cfg["classifier"])}
    assert_backbone_equal(model.timm_model, source, skip=head)
    assert result.missing == [] and sorted(result.dropped_head) == sorted(head)
