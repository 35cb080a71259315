"""Heatmaps of where the ViT looked for a finding: Grad-CAM on the tokens of the last block, and overlays.

Method: Grad-CAM (Selvaraju et al. 2017) adapted to ViT, as in pytorch-grad-cam's ViT recipe: the patch
tokens *entering* the last block's attention (the output of ``blocks[-1].norm1``) are the feature map; each
channel is weighted by the mean gradient of one label's logit over the patches, the weighted sum is ReLU'd,
laid out on the patch grid, upsampled to the input size and scaled to [0, 1]. Why those tokens: with class-token
pooling, the last block's *output* patch tokens never reach the logits (their gradient is zero); its input tokens
reach them through the last attention.

Grad-CAM is one of the explainers of :mod:`cxr_vit.evaluation.explainers` (with attention rollout and Chefer et al.'s
gradient-weighted rollout); the registry there decides which one draws the maps of prediction, the demo and the
evaluation report.

Maps are drawn on the image as the model saw it (the eval transform's resize and center crop), so every
heatmap pixel lines up with the pixel it explains.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from transformers import TimmWrapperForImageClassification


def model_family(model: TimmWrapperForImageClassification) -> str:
    """``'convnext_atto' (ConvNeXt)``: the architecture and timm class, for messages about what is supported."""
    return f"{getattr(model.config, 'architecture', '?')!r} ({type(model.timm_model).__name__})"


def grad_cam_layer(model: TimmWrapperForImageClassification) -> torch.nn.Module:
    """The layer whose output Grad-CAM explains (``blocks[-1].norm1``), or a ValueError naming the family."""
    blocks = getattr(model.timm_model, "blocks", None)
    is_stack = isinstance(blocks, (torch.nn.Sequential, torch.nn.ModuleList)) and len(blocks) > 0
    if not is_stack or not hasattr(blocks[-1], "norm1"):
        raise ValueError(
            f"the 'gradcam' explainer needs a timm Vision Transformer (blocks[-1].norm1); {model_family(model)} is "
            "not one"
        )
    return blocks[-1].norm1


def check_label_indices(pixel_values: torch.Tensor, label_indices: torch.Tensor) -> None:
    """An explainer's ``label_indices`` must be ``(batch, k)``: the labels to explain for each image."""
    if label_indices.dim() != 2 or label_indices.shape[0] != pixel_values.shape[0]:
        raise ValueError(f"label_indices must be (batch, k), got {tuple(label_indices.shape)}")


def grad_cam(
    model: TimmWrapperForImageClassification, pixel_values: torch.Tensor, label_indices: torch.Tensor
) -> torch.Tensor:
    """Grad-CAM maps, shape ``(batch, k, height, width)``, each scaled to [0, 1].

    ``label_indices`` is ``(batch, k)``: which labels to explain for each image (e.g. its top-k findings).
    Images in a batch are independent in a ViT, so one backward pass per rank serves the whole batch.
    """
    check_label_indices(pixel_values, label_indices)
    timm_model = model.timm_model
    captured: dict[str, torch.Tensor] = {}
    handle = grad_cam_layer(model).register_forward_hook(lambda _m, _i, output: captured.update(tokens=output))
    try:
        with torch.enable_grad():
            # requires_grad on the input keeps a graph even when the weights are frozen.
            logits = model(pixel_values=pixel_values.detach().requires_grad_(True)).logits
            tokens = captured["tokens"]
            maps = []
            for rank in range(label_indices.shape[1]):
                selected = logits.gather(1, label_indices[:, rank : rank + 1].to(logits.device)).sum()
                (gradients,) = torch.autograd.grad(selected, tokens, retain_graph=rank < label_indices.shape[1] - 1)
                maps.append(_cam(tokens.detach(), gradients, timm_model.num_prefix_tokens, pixel_values.shape[-2:]))
    finally:
        handle.remove()
    return torch.stack(maps, dim=1) if maps else pixel_values.new_zeros((pixel_values.shape[0], 0, 1, 1))


def _cam(tokens: torch.Tensor, gradients: torch.Tensor, num_prefix: int, size: Sequence[int]) -> torch.Tensor:
    patches, patch_gradients = tokens[:, num_prefix:].float(), gradients[:, num_prefix:].float()
    weights = patch_gradients.mean(dim=1, keepdim=True)  # (batch, 1, channels)
    cam = torch.relu((weights * patches).sum(dim=-1))  # (batch, patches)
    height, width = size
    grid = int(round((cam.shape[1] * height / width) ** 0.5))
    if grid == 0 or cam.shape[1] % grid:
        raise ValueError(f"cannot lay {cam.shape[1]} patch tokens on a grid for a {height}x{width} input")
    return upsample_to_unit(cam.reshape(cam.shape[0], 1, grid, cam.shape[1] // grid), size)


def upsample_to_unit(grid: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Patch-grid maps ``(batch, 1, h, w)`` upsampled bilinearly to ``size`` and scaled to [0, 1] per map."""
    upsampled = F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    low = upsampled.amin(dim=(1, 2), keepdim=True)
    span = upsampled.amax(dim=(1, 2), keepdim=True) - low
    # A flat map (no positive evidence anywhere) stays all zero instead of dividing by zero.
    scaled = torch.where(span > 0, (upsampled - low) / span.clamp_min(1e-12), torch.zeros_like(upsampled))
    return scaled.clamp(0.0, 1.0)


def overlay(view: Image.Image, heatmap: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> Image.Image:
    """The heatmap (values in [0, 1], any size) in colour over the grayscale view, as RGB."""
    base = np.asarray(view.convert("L").convert("RGB"), dtype=np.float32) / 255.0
    heat = Image.fromarray(np.uint8(np.clip(heatmap, 0, 1) * 255)).resize(view.size, Image.Resampling.BILINEAR)
    colours = matplotlib.colormaps[colormap](np.asarray(heat, dtype=np.float32) / 255.0)[..., :3]
    blended = (1.0 - alpha) * base + alpha * colours
    return Image.fromarray(np.uint8(np.clip(blended, 0, 1) * 255 + 0.5), mode="RGB")


def heatmap_panel(view: Image.Image, heatmaps: Sequence[tuple[str, np.ndarray]], panel_size: int = 256) -> Image.Image:
    """One row: the plain input view, then one overlay per ``(caption, heatmap)``, captions underneath."""
    font = ImageFont.load_default(size=max(10, panel_size // 18))
    caption_height = panel_size // 8
    panels = [("model input", view.convert("RGB"))] + [(caption, overlay(view, heat)) for caption, heat in heatmaps]
    canvas = Image.new("RGB", (panel_size * len(panels), panel_size + caption_height), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (caption, picture) in enumerate(panels):
        left = index * panel_size
        canvas.paste(picture.resize((panel_size, panel_size), Image.Resampling.BICUBIC), (left, 0))
        draw.text(
            (left + panel_size // 2, panel_size + caption_height // 2), caption, fill="black", font=font, anchor="mm"
        )
    return canvas
