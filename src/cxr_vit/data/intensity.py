"""X-ray intensity augmentation on the batch path: brightness, contrast, gamma, sharpness/blur and noise.

Radiographs differ between sites and machines in exposure, windowing (gamma), processing (edge enhancement or
smoothing) and quantum noise much more than in geometry, so these are the photometric changes worth training
on; a horizontal flip is not among them (the heart is on the left). Like RandAugment, each image draws
``num_ops`` distinct ops and, for each, its own strength within the range that ``magnitude`` (0-10) sets;
the whole batch is computed at once on its device (one pass per op type, no loop over images).

Ranges at magnitude ``m`` (``s = m / 10``; each image draws ``u`` uniform in [-1, 1]):

==========  ============================================  ========================  =========================
op          per-image parameter                           range at m = 10           formula
==========  ============================================  ========================  =========================
brightness  factor ``1 + 0.4 s u``                        0.6 .. 1.4                ``x * f``
contrast    factor ``1 + 0.4 s u``                        0.6 .. 1.4                ``mean + f (x - mean)``
gamma       ``(1 + 0.5 s) ** u``                          0.67 .. 1.5               ``255 (x / 255) ** g``
sharpness   factor ``1 + 0.9 s u`` (< 1 blurs)            0.1 .. 1.9                ``blur + f (x - blur)``
noise       sigma ``0.04 * 255 s |u|`` grey levels        0 .. 10.2                 ``x + sigma N(0, 1)``
==========  ============================================  ========================  =========================

Brightness, contrast and sharpness follow PIL's ``ImageEnhance`` / torchvision's ``adjust_*`` (contrast about
each image's own mean; sharpness blends with torchvision's 3x3 smoothing kernel, borders kept), and sharpness
uses RandAugment's 0.9 range; brightness and contrast are milder than RandAugment's (0.1 .. 1.9), which
would wash out faint opacities. Every op clamps to [0, 255]. Magnitude 0 returns the batch unchanged.

Intended place: after the geometric ``grid_sample`` of :class:`cxr_vit.data.gpu_augment.BatchImageTransform`
and before normalisation, on pixels in [0, 255].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

MAX_MAGNITUDE = 10.0
# Strength of each op at magnitude 10 (see the module docstring for how each is used).
BRIGHTNESS_RANGE = 0.4
CONTRAST_RANGE = 0.4
GAMMA_RANGE = 0.5
SHARPNESS_RANGE = 0.9
NOISE_SIGMA = 0.04 * 255.0
# torchvision's adjust_sharpness kernel (PIL's SMOOTH filter)
_SMOOTH_KERNEL = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """``images * factor`` per image (B,) — 1 is the identity, < 1 darker — clamped to [0, 255]."""
    return (images * _per_image(factor, images)).clamp_(0, 255)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Deviations from each image's own mean scaled by ``factor`` (B,): the std scales, the mean stays."""
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return torch.lerp(mean, images, _per_image(factor, images)).clamp_(0, 255)


def adjust_gamma(images: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
    """``255 * (x / 255) ** gamma`` per image: > 1 darkens the mid-greys, < 1 brightens; 0 and 255 stay."""
    return images.clamp(0, 255).div(255).pow(_per_image(gamma, images)).mul_(255).clamp_(0, 255)


def adjust_sharpness(images: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Blend with a 3x3-smoothed copy as torchvision does: ``factor`` < 1 blurs, > 1 sharpens, 1 is the identity."""
    if images.shape[-1] < 3 or images.shape[-2] < 3:
        return images.clone()
    channels = images.shape[1]
    kernel = _SMOOTH_KERNEL.to(device=images.device, dtype=images.dtype).expand(channels, 1, 3, 3)
    blurred = images.clone()
    blurred[..., 1:-1, 1:-1] = F.conv2d(images, kernel, groups=channels)  # the 1-pixel border is kept
    return torch.lerp(blurred, images, _per_image(factor, images)).clamp_(0, 255)


def add_gaussian_noise(
    images: torch.Tensor, sigma: torch.Tensor | float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-mean Gaussian noise of standard deviation ``sigma`` grey levels per image (B,), clamped."""
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return noise.mul_(_per_image(sigma, images)).add_(images).clamp_(0, 255)


class _Op(NamedTuple):
    apply: Callable[..., torch.Tensor]
    strength: Callable[[torch.Tensor, float], torch.Tensor]  # (u uniform in [-1, 1], magnitude / 10) -> parameter
    identity: float


_OPS: dict[str, _Op] = {
    "brightness": _Op(adjust_brightness, lambda u, s: 1 + BRIGHTNESS_RANGE * s * u, 1.0),
    "contrast": _Op(adjust_contrast, lambda u, s: 1 + CONTRAST_RANGE * s * u, 1.0),
    "gamma": _Op(adjust_gamma, lambda u, s: (1 + GAMMA_RANGE * s) ** u, 1.0),
    "sharpness": _Op(adjust_sharpness, lambda u, s: 1 + SHARPNESS_RANGE * s * u, 1.0),
    "noise": _Op(add_gaussian_noise, lambda u, s: NOISE_SIGMA * s * u.abs(), 0.0),
}
OPS: tuple[str, ...] = tuple(_OPS)  # also the order in which selected ops are applied: noise last


def apply_op(op: str, images: torch.Tensor, parameter: torch.Tensor | float) -> torch.Tensor:
    """``op`` (one of :data:`OPS`) at one ``parameter``: its factor, gamma or noise sigma (:func:`strength_range`)."""
    _check_ops([op])
    return _OPS[op].apply(images, parameter)


def strength_range(op: str, magnitude: float) -> tuple[float, float]:
    """The (lowest, highest) parameter ``op`` draws at ``magnitude``: factor, gamma, or noise sigma."""
    _check_ops([op])
    scale = _check_magnitude(magnitude) / MAX_MAGNITUDE
    low, high = (_OPS[op].strength(torch.tensor(u, dtype=torch.float64), scale).item() for u in (-1.0, 1.0))
    return (min(low, high), max(low, high)) if op != "noise" else (0.0, high)


@dataclass(frozen=True)
class IntensityAugment:
    """RandAugment-style intensity augmentation of (B, 1, H, W) batches in [0, 255], on their device.

    Args:
        ops: names from :data:`OPS`; applied in that canonical order whatever the order given.
        num_ops: ops per image, distinct, drawn per image (at most ``len(ops)``; fewer ops are all applied).
        magnitude: 0 (identity) to 10; sets the range each image's strength is drawn from (module docstring).

    ``augment(images)`` returns a new tensor of the same shape and dtype; integer batches are computed in
    float32 and rounded back. Draws use torch's global RNG of the batch's device (``torch.manual_seed``
    reproduces them) or ``generator``.
    """

    ops: tuple[str, ...] = OPS
    num_ops: int = 2
    magnitude: float = 5.0

    def __post_init__(self):
        object.__setattr__(self, "ops", tuple(op for op in OPS if op in _check_ops(self.ops)))
        _check_magnitude(self.magnitude)
        if self.num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {self.num_ops}")

    @classmethod
    def from_args(cls, aug_ops: str, aug_magnitude: float, num_ops: int = 2) -> IntensityAugment:
        """From command-line style values: ``aug_ops`` comma-separated names, ``all``, or ``none``/empty."""
        names = [name.strip().lower() for name in aug_ops.split(",") if name.strip()]
        if names == ["all"]:
            names = list(OPS)
        elif names == ["none"]:
            names = []
        return cls(ops=tuple(names), num_ops=num_ops, magnitude=aug_magnitude)

    @property
    def is_identity(self) -> bool:
        return self.magnitude == 0 or self.num_ops == 0 or not self.ops

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Which ops each image gets, (B, len(ops)) bool, and every op's per-image parameter (B,)."""
        scale = self.magnitude / MAX_MAGNITUDE
        # num_ops distinct ops per image: the first columns of a random permutation of the ops
        order = torch.rand(batch_size, len(self.ops), generator=generator, device=device).argsort(dim=1)
        chosen = torch.zeros(batch_size, len(self.ops), dtype=torch.bool, device=device)
        chosen.scatter_(1, order[:, : self.num_ops], True)
        params = {}
        for index, op in enumerate(self.ops):
            u = torch.rand(batch_size, generator=generator, device=device) * 2 - 1
            params[op] = torch.where(chosen[:, index], _OPS[op].strength(u, scale), _OPS[op].identity)
        return chosen, params

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dim() not in (3, 4):
            raise ValueError(f"expected batches (B, 1, H, W) or (B, H, W), got shape {tuple(images.shape)}")
        if self.is_identity:
            return images
        # fp32 whatever autocast is active, as BatchImageTransform computes
        with torch.autocast(images.device.type, enabled=False):
            batch = images.unsqueeze(1) if images.dim() == 3 else images
            pixels = batch.to(torch.float32, copy=True)  # a copy: rows are replaced in place below
            chosen, params = self.sample(batch.shape[0], batch.device, generator)
            for index, op in enumerate(self.ops):
                extra = {"generator": generator} if op == "noise" else {}
                strength = params[op].to(pixels.dtype)
                if pixels.device.type == "cpu":
                    # On a CPU, work on the images that drew this op only (num_ops of len(ops): 2 of 5 by default).
                    rows = chosen[:, index].nonzero().squeeze(1)
                    if len(rows):
                        pixels[rows] = _OPS[op].apply(pixels[rows], strength[rows], **extra)
                else:
                    # On a GPU every image is computed and the drawn ones kept: no host sync to find the rows.
                    changed = _OPS[op].apply(pixels, strength, **extra)
                    pixels = torch.where(chosen[:, index, None, None, None], changed, pixels)
            if not images.is_floating_point():
                pixels = pixels.round_()
            pixels = pixels.to(images.dtype)
        return pixels.squeeze(1) if images.dim() == 3 else pixels


def _per_image(value: torch.Tensor | float, images: torch.Tensor) -> torch.Tensor | float:
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
    return float(value)


def _check_ops(ops: Sequence[str]) -> Sequence[str]:
    if isinstance(ops, str):
        raise ValueError(f"ops must be a sequence of op names, not the string {ops!r}: use from_args for 'a,b'")
    unknown = [op for op in ops if op not in _OPS]
    if unknown:
        raise ValueError(f"unknown intensity augmentation op(s) {unknown}; valid ops: {', '.join(OPS)}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"ops listed twice in {list(ops)}")
    return ops


def _check_magnitude(magnitude: float) -> float:
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"magnitude must be in [0, {MAX_MAGNITUDE:g}] (0 = no change), got {magnitude}")
    return float(magnitude)
