"""Batch-wise image transforms on the training device: uint8 squares in, normalised model inputs out.

Both input pipelines hand the device the same ``S x S`` uint8 squares (:mod:`cxr_vit.data.transforms`), so one
definition here serves training and evaluation on both. Per-image PIL augmentation costs milliseconds of CPU per
image; the same geometry as one ``affine_grid`` + ``grid_sample`` over the whole batch keeps a GPU fed.

- train: random resized crop (area 75-100%, aspect 0.9-1.1), rotation up to 10 degrees, 5% shifts, black fill,
  no flip (anatomy is not left-right symmetric); composed into one affine map per image and sampled once, so
  there is a single resampling; then, optionally, X-ray intensity augmentation
  (:class:`cxr_vit.data.intensity.IntensityAugment`: brightness, contrast, gamma, sharpness, noise).
- eval: the centre ``input_size`` crop of the square, which completes timm's eval transform exactly.

Both end with grayscale -> 3 channels and the model's mean/std, computed as ``ToTensor`` + ``Normalize`` do.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .intensity import IntensityAugment
from .transforms import crop_offset, eval_geometry

# Fixed test-time views of a square: its centre crop and its four corner crops.
EVAL_VIEWS = 5
# Images per grid_sample call on a CPU: the grid and samples of 8 images at 224 px (~5 MB) stay in cache;
# one call for a 64-image batch runs at about half the images/s.
CPU_CHUNK_SIZE = 8


def crop_affine_theta(
    center: torch.Tensor, extent: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``affine_grid`` matrices (B, 2, 3) for crop -> resize -> rotate -> shift, in normalised coordinates.

    Args:
        center: (B, 2) crop centre (x, y) in [-1, 1] source coordinates.
        extent: (B, 2) crop width and height as fractions of the source (1 = the whole image).
        angle: (B,) rotation of the output in radians.
        shift: (B, 2) shift of the output (x, y) in normalised units (2 = the full width).

    An output point p comes from crop point q = R(-angle)(p - shift), which comes from source point
    center + extent * q. Rotating in the crop's own coordinates is rotating after the resize to a square, the
    order torchvision's RandomResizedCrop + RandomAffine use.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    width, height = extent[:, 0], extent[:, 1]
    linear = torch.stack(
        [torch.stack([width * cos, width * sin], dim=-1), torch.stack([-height * sin, height * cos], dim=-1)], dim=1
    )
    offset = center - (linear @ shift.unsqueeze(-1)).squeeze(-1)
    return torch.cat([linear, offset.unsqueeze(-1)], dim=-1)


class BatchImageTransform:
    """Model inputs from uint8 grayscale batches (B, H, W) or (B, 1, H, W), on whatever device they are.

    Args:
        data_config: timm's data config of the model (``cxr_vit.modeling.data_config``): input_size, mean,
            std, crop_pct.
        scale / ratio: random resized crop area fraction and aspect ratio ranges.
        degrees: maximum rotation; translate: maximum shift as a fraction of the side.
        interpolation: ``grid_sample`` mode of the train path (bilinear: the crops are near 1:1 scale).
        intensity: X-ray intensity augmentation applied per image after the geometry (None: none).
    """

    def __init__(
        self,
        data_config: dict[str, Any],
        scale: tuple[float, float] = (0.75, 1.0),
        ratio: tuple[float, float] = (0.9, 1.1),
        degrees: float = 10.0,
        translate: float = 0.05,
        interpolation: str = "bilinear",
        intensity: IntensityAugment | None = None,
    ):
        geometry = eval_geometry(data_config)
        self.crop_offset = crop_offset(geometry)
        self.size = geometry.input_size
        self.scale_size = geometry.resize_size  # the side of the uint8 squares it is given
        self.mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(data_config["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.scale, self.ratio, self.degrees, self.translate = scale, ratio, degrees, translate
        self.interpolation = interpolation
        self.intensity = intensity if intensity is not None and not intensity.is_identity else None
        # Per device, copied there once: a CPU -> GPU copy blocks the host until the GPU has run everything
        # queued before it, so one per step would stall the training loop.
        self._constants: dict[torch.device, _Constants] = {}

    def __call__(self, images: torch.Tensor, training: bool, view: int = 0) -> torch.Tensor:
        """Training: augmented inputs; otherwise the eval crop ``view`` (:meth:`eval_batch`)."""
        # fp32 whatever autocast is active: inputs are cast once by the model's own layers.
        with torch.autocast(images.device.type, enabled=False):
            return self.train_batch(images) if training else self.eval_batch(images, view)

    def train_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Random crop + rotation + shift per image: one ``grid_sample`` for the batch (chunks on CPU)."""
        images = _as_bchw(images)
        batch_size, device = images.shape[0], images.device
        theta = self.random_theta(batch_size, device)
        constants = self.constants(device)
        output = torch.empty((batch_size, 3, self.size, self.size), device=device)
        # On a CPU, chunks of a few images keep the intermediates in cache: about 2x the images/s of one pass.
        step = CPU_CHUNK_SIZE if device.type == "cpu" else max(batch_size, 1)
        for start in range(0, batch_size, step):
            stop = start + step
            grid = affine_grid(theta[start:stop], self.size)
            sampled = F.grid_sample(
                images[start:stop].float(), grid, mode=self.interpolation, padding_mode="zeros", align_corners=False
            )
            if self.intensity is not None:
                sampled = self.intensity(sampled)
            # pixels 0..255 -> (p / 255 - mean) / std, fused into one pass that also makes the 3 channels
            torch.addcmul(constants.bias, sampled, constants.scale, out=output[start:stop])
        return output

    def random_theta(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Affine matrices of random crops (torchvision's area / log-aspect sampling) and rotations/shifts."""

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return torch.rand(batch_size, *shape, device=device) * (high - low) + low

        area = uniform(*self.scale)
        aspect = torch.exp(uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        # torchvision resamples a crop that does not fit; clamping to the full side is the batched equivalent.
        extent = torch.stack([torch.sqrt(area * aspect), torch.sqrt(area / aspect)], dim=-1).clamp(max=1.0)
        center = (1.0 - extent) * uniform(-1.0, 1.0, 2)
        angle = uniform(-math.radians(self.degrees), math.radians(self.degrees))
        shift = uniform(-2.0 * self.translate, 2.0 * self.translate, 2)
        return crop_affine_theta(center, extent, angle, shift)

    def eval_batch(self, images: torch.Tensor, view: int = 0) -> torch.Tensor:
        """A ``size`` crop of each square, normalised: the centre (view 0, the last steps of timm's eval transform)
        or one of the four corners (views 1-4: top-left, top-right, bottom-left, bottom-right), for test-time
        augmentation over fixed views."""
        pixels = _as_bchw(images)
        if pixels.shape[-2:] != (self.scale_size, self.scale_size):
            raise ValueError(
                f"expected {self.scale_size}x{self.scale_size} squares from cxr_vit.data.transforms.resize_for_model, "
                f"got {tuple(pixels.shape[-2:])}: was the image cache built for another model size?"
            )
        if not 0 <= view < EVAL_VIEWS:
            raise ValueError(f"view must be 0 (centre) to {EVAL_VIEWS - 1} (corners), got {view}")
        far = self.scale_size - self.size
        top, left = [(self.crop_offset, self.crop_offset), (0, 0), (0, far), (far, 0), (far, far)][view]
        crop = pixels[..., top : top + self.size, left : left + self.size]
        return self.normalize(crop.float().div(255))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> (B, 3, H, W) with the model's mean/std, as ``Normalize`` computes it."""
        constants = self.constants(pixels.device)
        return pixels.expand(-1, 3, -1, -1).sub(constants.mean).div(constants.std)

    def constants(self, device: torch.device) -> _Constants:
        """The model's mean/std, and the pixel -> input affine map, as (1, 3, 1, 1) tensors on ``device``."""
        if device not in self._constants:
            scale, bias = 1.0 / (255.0 * self.std), -self.mean / self.std  # (p / 255 - mean) / std = p * scale + bias
            self._constants[device] = _Constants(*(t.to(device) for t in (self.mean, self.std, scale, bias)))
        return self._constants[device]


class _Constants(NamedTuple):
    mean: torch.Tensor
    std: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor


def affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, 1, size, size), align_corners=False)``, computed as two broadcast adds.

    The grid is affine in x and y separately, so it needs no (B, H*W, 3) x (3, 2) product: ~10x faster on
    a CPU core, and the same numbers to float rounding.
    """
    coords = (torch.arange(size, device=theta.device, dtype=theta.dtype) * 2 + 1) / size - 1
    along_x = theta[:, :, 0, None, None] * coords  # (B, 2, 1, W)
    along_y = theta[:, :, 1, None, None] * coords[:, None] + theta[:, :, 2, None, None]  # (B, 2, H, 1)
    grid = torch.empty((theta.shape[0], size, size, 2), device=theta.device, dtype=theta.dtype)
    torch.add(along_x[:, 0], along_y[:, 0], out=grid[..., 0])
    torch.add(along_x[:, 1], along_y[:, 1], out=grid[..., 1])
    return grid


def _as_bchw(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:
        return images.unsqueeze(1)
    if images.dim() == 4 and images.shape[1] == 1:
        return images
    raise ValueError(f"expected grayscale batches (B, H, W) or (B, 1, H, W), got shape {tuple(images.shape)}")
