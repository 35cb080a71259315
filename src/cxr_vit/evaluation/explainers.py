"""Heatmap explainers behind one signature, ``explain(model, pixel_values, label_indices) -> (B, k, H, W)``.

Every explainer returns one map per image and requested label, upsampled to the input size and min-max scaled
to [0, 1] per map (a flat map stays all zero), so localization scores and figures can swap methods by name:

* ``"gradcam"``: :func:`cxr_vit.evaluation.heatmaps.grad_cam` (Grad-CAM on the tokens entering the last block).
* ``"rollout"``: attention rollout (Abnar & Zuidema 2020): per block, the head-averaged attention plus the
  identity for the residual path, rows renormalised, ``(A + I) / 2``; the blocks' matrices multiplied from the
  first to the last; the map is the class token's row over the patch tokens. It is **class-agnostic**: the same
  map for every label, repeated along ``k``.
* ``"grad_rollout"``: the label-specific rule of Chefer, Gur & Wolf 2021 ("Generic Attention-model
  Explainability", ICCV, rules 5-6): per block ``Ā = mean_heads((∂ logit / ∂A ⊙ A)^+)``, relevance
  ``R ← R + Ā R`` from ``R = I``; the map is the class token's row of R over the patch tokens.

timm's ViT attention uses fused ``scaled_dot_product_attention``, which never materialises A. A forward hook
on each block's ``attn`` recomputes it from the block's own input, exactly as the non-fused path does
(``softmax(q_norm(q) * scale @ k_norm(k)^T)`` from ``attn.qkv``), without touching the model's outputs.
The gradient ``∂ logit / ∂A`` comes from the gradient of the attention output ``O = A V`` (captured as the
input of ``attn.norm``, which the fused and non-fused paths share): ``∂L/∂A = ∂L/∂O · Vᵀ``. The tests check both
against timm's non-fused path (``attn.fused_attn = False``), which materialises A.

Supported: timm Vision Transformers whose blocks use timm's standard ``Attention`` (``blocks[i].attn.qkv``), with
class-token or average pooling. Other families (ConvNeXt, Swin, EVA's rotary attention, ...) raise a ValueError
naming the family and the explainer. Call ``model.eval()`` first: dropout would make the maps random.

Which explainer (:func:`resolve_explainer`, shared by ``scripts/evaluate.py``, ``scripts/predict.py`` and the demo):

* asked for by name: that explainer, or an :class:`ExplainerError` naming it and the model's family when it cannot
  explain that family; never a silent substitute for an explicit choice;
* not asked for: :data:`DEFAULT_EXPLAINER`; where the family does not support it, :data:`FALLBACK_EXPLAINER`
  (Grad-CAM, which needs only ``blocks[-1].norm1``) with a note that says so; where neither does, an error.

The default is the explainer with the best pointing game on planted-signal films whose findings sit in known
boxes (``tests/test_planted_localization.py``: a 2-block ViT-Tiny at 64 px trained through the real scripts; the
figures are in ``docs/evaluation.md``). That is evidence about which method finds a known, label-specific
mark on a small ViT, not a guarantee for a 12-block ViT-B on real findings: report the explainer with the figures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import Attention
from transformers import TimmWrapperForImageClassification

from .heatmaps import check_label_indices, grad_cam, grad_cam_layer, model_family, upsample_to_unit

Explainer = Callable[[TimmWrapperForImageClassification, torch.Tensor, torch.Tensor], torch.Tensor]
SupportCheck = Callable[[TimmWrapperForImageClassification], None]
EXPLAINERS: dict[str, Explainer] = {}
SUPPORT_CHECKS: dict[str, SupportCheck] = {}
# Chosen by the pointing game on planted boxes (module docstring); gradcam is the fallback for other ViT variants.
DEFAULT_EXPLAINER = "grad_rollout"
FALLBACK_EXPLAINER = "gradcam"


class ExplainerError(ValueError):
    """An unknown explainer, or one that cannot explain this model's family; the message names both."""


def register_explainer(name: str, supports: SupportCheck | None = None) -> Callable[[Explainer], Explainer]:
    """Decorator: make an explainer available to :func:`get_explainer` under ``name``.

    ``supports(model)`` raises a ValueError naming the family when the explainer cannot explain ``model``,
    without running it (default: every model).
    """

    def register(function: Explainer) -> Explainer:
        EXPLAINERS[name] = function
        SUPPORT_CHECKS[name] = supports or (lambda model: None)
        return function

    return register


def get_explainer(name: str) -> Explainer:
    """The explainer registered as ``name`` (``gradcam``, ``rollout``, ``grad_rollout``)."""
    if name not in EXPLAINERS:
        raise KeyError(f"unknown explainer {name!r}; available: {', '.join(sorted(EXPLAINERS))}")
    return EXPLAINERS[name]


def check_explainer(model: TimmWrapperForImageClassification, name: str) -> None:
    """Raise :class:`ExplainerError` (one line) if ``name`` is unknown or cannot explain ``model``'s family."""
    if name not in EXPLAINERS:
        raise ExplainerError(f"unknown explainer {name!r}; available: {', '.join(sorted(EXPLAINERS))}")
    try:
        SUPPORT_CHECKS[name](model)
    except ValueError as err:
        raise ExplainerError(str(err)) from None


def resolve_explainer(model: TimmWrapperForImageClassification, name: str | None = None) -> tuple[str, str]:
    """``(explainer name, how it was chosen)`` for ``model`` under the rule in the module docstring."""
    if name is not None:
        check_explainer(model, name)
        return name, "asked for"
    try:
        check_explainer(model, DEFAULT_EXPLAINER)
        return DEFAULT_EXPLAINER, "the default"
    except ExplainerError as err:
        reason = str(err)
    try:
        check_explainer(model, FALLBACK_EXPLAINER)
    except ExplainerError:
        raise ExplainerError(
            f"no explainer can explain {model_family(model)}: the default, {DEFAULT_EXPLAINER}, and the fallback, "
            f"{FALLBACK_EXPLAINER}, need a timm Vision Transformer (available: {', '.join(sorted(EXPLAINERS))})"
        ) from None
    return FALLBACK_EXPLAINER, f"fallback: the default, {DEFAULT_EXPLAINER}, cannot explain this model ({reason})"


@register_explainer("gradcam", supports=grad_cam_layer)
def gradcam(
    model: TimmWrapperForImageClassification, pixel_values: torch.Tensor, label_indices: torch.Tensor
) -> torch.Tensor:
    """Grad-CAM (:func:`cxr_vit.evaluation.heatmaps.grad_cam`)."""
    return grad_cam(model, pixel_values, label_indices)


# ---- attention capture -------------------------------------------------------------------------------


def _gradcam_hint(model: TimmWrapperForImageClassification) -> str:
    try:
        grad_cam_layer(model)
    except ValueError:
        return ""  # e.g. ConvNeXt, Swin: no explainer here supports them
    return " Use the 'gradcam' explainer for this family."


def _attention_modules(model: TimmWrapperForImageClassification, explainer: str) -> list[Attention]:
    """The blocks' attention modules, or a ValueError naming the family and the explainer."""
    timm_model = model.timm_model
    family = model_family(model)
    blocks = getattr(timm_model, "blocks", None)
    is_stack = isinstance(blocks, (torch.nn.Sequential, torch.nn.ModuleList))
    modules = [getattr(block, "attn", None) for block in blocks] if is_stack else []
    # The recomputation mirrors timm's Attention.forward; a subclass or another attention (rotary, differential,
    # windowed) computes A differently, so only the exact forward is accepted.
    if not modules or not all(isinstance(m, Attention) and type(m).forward is Attention.forward for m in modules):
        raise ValueError(
            f"the {explainer!r} explainer needs a timm Vision Transformer whose blocks[i].attn is timm's "
            f"standard Attention (with a qkv projection); {family} is not one.{_gradcam_hint(model)}"
        )
    if getattr(timm_model, "global_pool", "token") not in ("token", "avg"):
        raise ValueError(
            f"the {explainer!r} explainer supports class-token or average pooling; {family} pools with "
            f"{timm_model.global_pool!r}"
        )
    if model.training:
        raise ValueError(f"the {explainer!r} explainer needs model.eval(): dropout would randomise the attention")
    return modules


class _AttentionRecorder:
    """Hooks that record each block's attention matrix (and what its gradient needs) during a forward pass."""

    def __init__(self, modules: list[Attention], with_gradients: bool):
        self.attentions: list[torch.Tensor] = []  # per block: (B, heads, N, N), detached
        self.values: list[torch.Tensor] = []  # per block: (B, heads, N, head_dim), detached
        self.outputs: list[torch.Tensor] = []  # per block: attention output A V, (B, N, heads * head_dim), in graph
        self.handles = []
        for module in modules:
            self.handles.append(module.register_forward_hook(self._record, with_kwargs=True))
            if with_gradients:
                self.handles.append(module.norm.register_forward_hook(self._record_output))

    def _record(self, module: Attention, args: tuple, kwargs: dict, _output: torch.Tensor) -> None:
        if kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
            raise ValueError("attention masks are not supported by the attention explainers")
        x = args[0] if args else kwargs["x"]
        with torch.no_grad():
            batch, tokens, _ = x.shape
            qkv = module.qkv(x).reshape(batch, tokens, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            q, k = module.q_norm(q), module.k_norm(k)
            attention = ((q.float() * module.scale) @ k.float().transpose(-2, -1)).softmax(dim=-1)
        self.attentions.append(attention)
        self.values.append(v.float())

    def _record_output(self, _module: torch.nn.Module, args: tuple, _output: torch.Tensor) -> None:
        self.outputs.append(args[0])

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def attention_gradients(self, gradients: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """∂L/∂A per block from ∂L/∂(A V): (B, N, heads * head_dim) -> (B, heads, N, N)."""
        result = []
        for attention, values, gradient in zip(self.attentions, self.values, gradients, strict=True):
            if gradient is None:  # a block that does not reach the selected logits
                result.append(torch.zeros_like(attention))
                continue
            batch, heads, tokens, head_dim = values.shape
            per_head = gradient.float().reshape(batch, tokens, heads, head_dim).transpose(1, 2)
            result.append(per_head @ values.transpose(-2, -1))
        return result


def attention_maps(
    model: TimmWrapperForImageClassification,
    pixel_values: torch.Tensor,
    label_indices: torch.Tensor | None = None,
    explainer: str = "attention",
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Each block's attention ``(B, heads, N, N)`` and, for each rank of ``label_indices`` ``(B, k)``, each
    block's gradient of the selected logits with respect to it (an empty list without ``label_indices``).

    The model's outputs are those of its normal forward pass; the hooks are removed before returning.
    """
    modules = _attention_modules(model, explainer)
    with_gradients = label_indices is not None
    recorder = _AttentionRecorder(modules, with_gradients)
    gradients: list[list[torch.Tensor]] = []
    try:
        if not with_gradients:
            with torch.no_grad():
                model(pixel_values=pixel_values)
        else:
            check_label_indices(pixel_values, label_indices)
            with torch.enable_grad():
                # requires_grad on the input keeps a graph even when the weights are frozen.
                logits = model(pixel_values=pixel_values.detach().requires_grad_(True)).logits
                for rank in range(label_indices.shape[1]):
                    selected = logits.gather(1, label_indices[:, rank : rank + 1].to(logits.device)).sum()
                    raw = torch.autograd.grad(
                        selected, recorder.outputs, retain_graph=rank < label_indices.shape[1] - 1, allow_unused=True
                    )
                    gradients.append(recorder.attention_gradients(list(raw)))
    finally:
        recorder.remove()
    return recorder.attentions, gradients


# ---- combining the blocks ----------------------------------------------------------------------------


def rollout_relevance(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema's rollout ``(B, N, N)``: ``prod_l (mean_heads(A_l) + I) / 2``, the last block leftmost."""
    joint = None
    for attention in attentions:
        fused = attention.float().mean(dim=1)
        eye = torch.eye(fused.shape[-1], device=fused.device, dtype=fused.dtype)
        step = fused + eye
        step = step / step.sum(dim=-1, keepdim=True)
        joint = step if joint is None else step @ joint
    return joint


def gradient_rollout_relevance(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al. 2021 (ICCV) relevance ``(B, N, N)``: ``R = I``, then ``R += mean_heads((∇A ⊙ A)^+) @ R``."""
    relevance = None
    for attention, gradient in zip(attentions, gradients, strict=True):
        weighted = (gradient.float() * attention.float()).clamp(min=0).mean(dim=1)
        if relevance is None:
            eye = torch.eye(weighted.shape[-1], device=weighted.device, dtype=weighted.dtype)
            relevance = eye.expand_as(weighted).clone()
        relevance = relevance + weighted @ relevance
    return relevance


def _token_map(model: TimmWrapperForImageClassification, relevance: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """The pooled token's relevance over the patches, on the patch grid, upsampled to ``size``, scaled to [0, 1]."""
    timm_model = model.timm_model
    prefix = timm_model.num_prefix_tokens
    if timm_model.global_pool == "token":
        scores = relevance[:, 0, prefix:]
    else:  # "avg": the head sees the mean of the patch tokens
        scores = relevance[:, prefix:, prefix:].mean(dim=1)
    height, width = size
    patch_h, patch_w = timm_model.patch_embed.patch_size
    grid_h, grid_w = height // patch_h, width // patch_w
    if grid_h * grid_w != scores.shape[1]:
        raise ValueError(f"cannot lay {scores.shape[1]} patch tokens on a grid for a {height}x{width} input")
    return upsample_to_unit(scores.reshape(-1, 1, grid_h, grid_w), size)


@register_explainer("rollout", supports=lambda model: _attention_modules(model, "rollout"))
def attention_rollout(
    model: TimmWrapperForImageClassification, pixel_values: torch.Tensor, label_indices: torch.Tensor
) -> torch.Tensor:
    """Attention rollout maps ``(B, k, H, W)``; class-agnostic, so the k maps of an image are the same map."""
    check_label_indices(pixel_values, label_indices)
    attentions, _ = attention_maps(model, pixel_values, explainer="rollout")
    maps = _token_map(model, rollout_relevance(attentions), pixel_values.shape[-2:])
    return maps[:, None].expand(-1, label_indices.shape[1], -1, -1).contiguous()


@register_explainer("grad_rollout", supports=lambda model: _attention_modules(model, "grad_rollout"))
def gradient_rollout(
    model: TimmWrapperForImageClassification, pixel_values: torch.Tensor, label_indices: torch.Tensor
) -> torch.Tensor:
    """Label-specific gradient-weighted rollout (Chefer et al. 2021, ICCV) maps ``(B, k, H, W)``."""
    check_label_indices(pixel_values, label_indices)
    attentions, gradients = attention_maps(model, pixel_values, label_indices, explainer="grad_rollout")
    maps = [
        _token_map(model, gradient_rollout_relevance(attentions, per_rank), pixel_values.shape[-2:])
        for per_rank in gradients
    ]
    if not maps:
        return pixel_values.new_zeros((pixel_values.shape[0], 0, *pixel_values.shape[-2:]))
    return torch.stack(maps, dim=1)
