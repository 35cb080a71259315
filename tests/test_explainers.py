"""Explainers: shapes, range, determinism, the recomputed attention against timm's non-fused path, and refusals."""

from __future__ import annotations

import copy

import pytest
import torch

from cxr_vit.evaluation.explainers import (
    EXPLAINERS,
    attention_maps,
    get_explainer,
    gradient_rollout_relevance,
    rollout_relevance,
)
from cxr_vit.modeling import create_model


def tiny_vit(**model_kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(
        "vit_tiny_patch16_224", pretrained=False, image_size=64, model_kwargs={"depth": 2, **model_kwargs}
    )
    with torch.no_grad():  # sharper than the near-uniform attention of a fresh init, so the maps have structure
        for block in model.timm_model.blocks:
            block.attn.qkv.weight.mul_(6.0)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_vit()


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


LABELS_TO_EXPLAIN = torch.tensor([[4, 9, 1], [0, 4, 14]])


def test_registry():
    assert {"gradcam", "rollout", "grad_rollout"} <= set(EXPLAINERS)
    with pytest.raises(KeyError, match="available: grad_rollout, gradcam, rollout"):
        get_explainer("lime")


@pytest.mark.parametrize("name", ["gradcam", "rollout", "grad_rollout"])
def test_shape_range_determinism_and_untouched_outputs(model, pixels, name):
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
    explain = get_explainer(name)
    maps = explain(model, pixels, LABELS_TO_EXPLAIN)
    assert maps.shape == (2, 3, 64, 64)
    assert maps.min() >= 0 and maps.max() <= 1
    assert (maps.amax(dim=(-2, -1)) == 1).all()  # every map has structure and is scaled to reach 1
    assert torch.equal(maps, explain(model, pixels, LABELS_TO_EXPLAIN))
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).logits, before, rtol=0, atol=0)
    for block in model.timm_model.blocks:  # every hook is gone
        assert not block.attn._forward_hooks and not block.attn.norm._forward_hooks
    with pytest.raises(ValueError, match="label_indices must be"):
        explain(model, pixels, LABELS_TO_EXPLAIN[0])


def test_rollout_is_class_agnostic_and_grad_rollout_is_not(model, pixels):
    rollout = get_explainer("rollout")(model, pixels, LABELS_TO_EXPLAIN)
    assert torch.equal(rollout[:, 0], rollout[:, 1]) and torch.equal(rollout[:, 0], rollout[:, 2])
    specific = get_explainer("grad_rollout")(model, pixels, LABELS_TO_EXPLAIN)
    assert not torch.allclose(specific[0, 0], specific[0, 1])
    # The same label asked twice (image 0 rank 0 and image 1 rank 1 are both label 4) gives per-image maps only.
    alone = get_explainer("grad_rollout")(model, pixels[:1], torch.tensor([[4]]))
    torch.testing.assert_close(alone[0, 0], specific[0, 0], rtol=1e-4, atol=1e-5)


def test_gradcam_by_hand(model, pixels):
    """Grad-CAM (Selvaraju et al.) on the last block's first norm: channel weights are the patch-mean gradients of
    the logit, the map is ReLU of the weighted sum, upsampled bilinearly from the 4x4 patch grid, scaled to [0, 1]."""
    tokens = {}
    hook = model.timm_model.blocks[-1].norm1.register_forward_hook(lambda _m, _i, out: tokens.update(out=out))
    logits = model(pixel_values=pixels).logits
    hook.remove()
    expected = []
    for rank in range(LABELS_TO_EXPLAIN.shape[1]):
        selected = logits.gather(1, LABELS_TO_EXPLAIN[:, rank : rank + 1]).sum()
        (gradient,) = torch.autograd.grad(selected, tokens["out"], retain_graph=True)
        patches, weights = tokens["out"][:, 1:].detach(), gradient[:, 1:].mean(dim=1)  # class token dropped
        grid = torch.relu(torch.einsum("bpc,bc->bp", patches, weights)).reshape(-1, 1, 4, 4)
        upsampled = torch.nn.functional.interpolate(grid, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
        low, high = upsampled.amin(dim=(1, 2), keepdim=True), upsampled.amax(dim=(1, 2), keepdim=True)
        expected.append((upsampled - low) / (high - low))
    maps = get_explainer("gradcam")(model, pixels, LABELS_TO_EXPLAIN)
    torch.testing.assert_close(maps, torch.stack(expected, dim=1), rtol=1e-4, atol=1e-5)
    assert maps.amax(dim=(2, 3)).eq(1).all() and maps.amin(dim=(2, 3)).eq(0).all()


def reference_attention(model, pixels, label_indices):
    """A and dlogit/dA from timm's non-fused path, which materialises A (captured at attn_drop, identity in eval)."""
    reference = copy.deepcopy(model)
    captured = []
    for block in reference.timm_model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda _m, _i, output: captured.append(output))
    logits = reference(pixel_values=pixels.clone().requires_grad_(True)).logits
    gradients = []
    for rank in range(label_indices.shape[1]):
        selected = logits.gather(1, label_indices[:, rank : rank + 1]).sum()
        gradients.append(list(torch.autograd.grad(selected, captured, retain_graph=True)))
    return [a.detach() for a in captured], gradients, logits.detach()


def test_recomputed_attention_matches_the_non_fused_path(model, pixels):
    assert all(block.attn.fused_attn for block in model.timm_model.blocks)  # the model under test is fused
    attentions, gradients = attention_maps(model, pixels, LABELS_TO_EXPLAIN)
    ref_attentions, ref_gradients, ref_logits = reference_attention(model, pixels, LABELS_TO_EXPLAIN)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).logits, ref_logits, rtol=1e-4, atol=1e-5)
    assert len(attentions) == 2 and attentions[0].shape == (2, 3, 17, 17)  # 3 heads, 16 patches + class token
    assert attentions[0].max() > 0.2  # not uniform (1/17): the comparison below is not trivial
    torch.testing.assert_close(attentions, ref_attentions, rtol=1e-4, atol=1e-6)
    for ours, theirs in zip(gradients, ref_gradients, strict=True):
        assert max(g.abs().max() for g in theirs) > 0
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(rollout_relevance(attentions), rollout_relevance(ref_attentions), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        gradient_rollout_relevance(attentions, gradients[0]),
        gradient_rollout_relevance(ref_attentions, ref_gradients[0]),
        rtol=1e-3,
        atol=1e-7,
    )


def test_rollout_of_controlled_attention():
    # One block, class token + 4 patches; every head sends the class token to patch 2 (token 3).
    attention = torch.eye(5).repeat(1, 2, 1, 1)  # (batch 1, 2 heads, 5, 5)
    attention[0, :, 0] = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])
    relevance = rollout_relevance([attention])
    torch.testing.assert_close(relevance[0, 0], torch.tensor([0.5, 0.0, 0.0, 0.5, 0.0]))
    # Two blocks: the product with the later block on the left, (A2 + I) / 2 @ (A1 + I) / 2.
    second = torch.full((1, 2, 5, 5), 0.2)
    expected = ((second[0, 0] + torch.eye(5)) / 2) @ ((attention[0, 0] + torch.eye(5)) / 2)
    torch.testing.assert_close(rollout_relevance([attention, second])[0], expected)


def test_gradient_rollout_rule_by_hand():
    attention = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]], [[1.0, 0.0], [0.0, 1.0]]]])  # (1, 2 heads, 2, 2)
    gradient = torch.tensor([[[[1.0, -1.0], [2.0, 0.5]], [[-3.0, 4.0], [1.0, 1.0]]]])
    # (grad * A)^+ per head: [[.5, 0], [.4, .4]] and [[0, 0], [0, 1]]; mean over heads: [[.25, 0], [.2, .7]].
    weighted = torch.tensor([[0.25, 0.0], [0.2, 0.7]])
    torch.testing.assert_close(gradient_rollout_relevance([attention], [gradient])[0], torch.eye(2) + weighted)
    two = gradient_rollout_relevance([attention, attention], [gradient, gradient])[0]
    first = torch.eye(2) + weighted
    torch.testing.assert_close(two, first + weighted @ first)


def test_average_pooled_vit_without_class_token(pixels):
    model = tiny_vit(global_pool="avg", class_token=False, depth=1)
    assert model.timm_model.num_prefix_tokens == 0
    for name in ("rollout", "grad_rollout"):
        maps = get_explainer(name)(model, pixels, LABELS_TO_EXPLAIN[:, :1])
        assert maps.shape == (2, 1, 64, 64) and maps.max() == 1


@pytest.mark.parametrize(
    ("architecture", "kwargs"),
    [
        ("convnext_atto", {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)}),
        ("swin_tiny_patch4_window7_224", {"depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "embed_dim": 8}),
    ],
)
@pytest.mark.parametrize("name", ["rollout", "grad_rollout"])
def test_unsupported_families_are_named(architecture, kwargs, name, pixels):
    model = create_model(architecture, pretrained=False, model_kwargs=kwargs).eval()
    with pytest.raises(ValueError, match=rf"the '{name}' explainer needs a timm Vision Transformer.*{architecture}"):
        get_explainer(name)(model, pixels, LABELS_TO_EXPLAIN)


def test_training_mode_is_refused():
    model = tiny_vit(depth=1).train()
    with pytest.raises(ValueError, match="model.eval()"):
        get_explainer("rollout")(model, torch.zeros(1, 3, 64, 64), torch.tensor([[0]]))
