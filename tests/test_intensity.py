"""X-ray intensity augmentation: identity at magnitude 0, each op's direction, per-image draws, seeds, ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TEST_DATA
from PIL import Image

from cxr_vit.data.intensity import (
    OPS,
    IntensityAugment,
    add_gaussian_noise,
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    adjust_sharpness,
    strength_range,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def xrays() -> torch.Tensor:
    """Two real films (64 px crops of the bundled 256 px test images) plus a mid-grey ramp: (3, 1, 64, 64)."""
    names = ["00000011_000.png", "00000017_000.png"]
    films = [np.asarray(Image.open(TEST_DATA / name).convert("L"))[96:160, 96:160] for name in names]
    ramp = np.tile(np.linspace(40, 215, 64, dtype=np.float32), (64, 1))
    return torch.from_numpy(np.stack([*films, ramp]).astype(np.float32)).unsqueeze(1)


def high_frequency_energy(images: torch.Tensor) -> torch.Tensor:
    """Per image: mean squared Laplacian response."""
    laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(images, laplacian).pow(2).mean(dim=(1, 2, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_magnitude_zero_is_the_identity(xrays, device):
    images = xrays.to(device)
    assert IntensityAugment(magnitude=0)(images) is images
    assert IntensityAugment(num_ops=0, magnitude=10)(images) is images
    assert IntensityAugment.from_args("none", 10)(images) is images


def test_brightness_scales_the_mean(xrays):
    darker, brighter = adjust_brightness(xrays, 0.8), adjust_brightness(xrays, 1.2)
    assert (darker.mean(dim=(1, 2, 3)) < xrays.mean(dim=(1, 2, 3))).all()
    assert (brighter.mean(dim=(1, 2, 3)) > xrays.mean(dim=(1, 2, 3))).all()
    torch.testing.assert_close(darker, xrays * 0.8)


def test_contrast_scales_the_spread_about_each_images_mean(xrays):
    for factor in (0.7, 1.3):
        out = adjust_contrast(xrays, factor)
        ramp, ramp_out = xrays[2], out[2]  # no clamping on the ramp: exact
        torch.testing.assert_close(ramp_out.std(), ramp.std() * factor)
        torch.testing.assert_close(ramp_out.mean(), ramp.mean())
        assert ((out.std(dim=(1, 2, 3)) > xrays.std(dim=(1, 2, 3))) == (factor > 1)).all()
    # each image about its own mean: the same result alone as in a batch
    torch.testing.assert_close(adjust_contrast(xrays[:1], 1.3), adjust_contrast(xrays, 1.3)[:1])


def test_gamma_is_monotonic_and_darkens_above_one(xrays):
    ramp = torch.linspace(0, 255, 256).view(1, 1, 1, 256)
    for gamma in (0.67, 1.5):
        curve = adjust_gamma(ramp, gamma).flatten()
        assert (curve.diff() > 0).all()  # order of grey levels kept
        assert curve[0] == 0 and curve[-1] == pytest.approx(255)
        mid = curve[1:-1] - ramp.flatten()[1:-1]
        assert ((mid < 0) if gamma > 1 else (mid > 0)).all()
    assert (adjust_gamma(xrays, 1.5).mean(dim=(1, 2, 3)) < xrays.mean(dim=(1, 2, 3))).all()


def test_blur_reduces_and_sharpen_increases_high_frequencies(xrays):
    energy = high_frequency_energy(xrays[:2])  # the films (the ramp has none)
    assert (high_frequency_energy(adjust_sharpness(xrays[:2], 0.1)) < 0.7 * energy).all()
    assert (high_frequency_energy(adjust_sharpness(xrays[:2], 1.9)) > 1.3 * energy).all()
    torch.testing.assert_close(adjust_sharpness(xrays, 1.0), xrays)


def test_noise_adds_variance_of_sigma_squared():
    flat = torch.full((4, 1, 64, 64), 128.0)
    sigma = torch.tensor([0.0, 2.0, 5.0, 10.0])
    torch.manual_seed(0)
    noisy = add_gaussian_noise(flat, sigma)
    torch.testing.assert_close(noisy.std(dim=(1, 2, 3)), sigma, atol=0.3, rtol=0.05)
    torch.testing.assert_close(noisy.mean(dim=(1, 2, 3)), torch.full((4,), 128.0), atol=0.5, rtol=0)


@pytest.mark.parametrize("op", OPS)
def test_each_op_alone_stays_in_its_range_per_image(xrays, op):
    """One op at magnitude 10 on 16 copies of a film: each copy gets its own strength within the range."""
    images = xrays[:1].expand(16, -1, -1, -1)
    torch.manual_seed(0)
    out = IntensityAugment(ops=(op,), num_ops=1, magnitude=10)(images)
    changed = (out - images).abs().mean(dim=(1, 2, 3))
    assert (changed > 0).all()
    assert len({round(value, 3) for value in changed.tolist()}) == 16  # independent draws per image
    low, high = strength_range(op, 10)
    if op == "brightness":
        ratio = out.mean(dim=(1, 2, 3)) / images.mean(dim=(1, 2, 3))
        assert ((ratio >= low - 1e-4) & (ratio <= high + 1e-4)).all() and ratio.min() < 1 < ratio.max()


def test_num_ops_distinct_ops_per_image():
    chosen, params = IntensityAugment(num_ops=2, magnitude=10).sample(1000)
    assert (chosen.sum(dim=1) == 2).all()
    assert (chosen.float().mean(dim=0) - 0.4).abs().max() < 0.06  # each op picked for about 2 in 5 images
    for index, op in enumerate(OPS):
        low, high = strength_range(op, 10)
        drawn = params[op][chosen[:, index]]
        assert ((drawn >= low - 1e-6) & (drawn <= high + 1e-6)).all()
        identity = 0.0 if op == "noise" else 1.0
        assert (params[op][~chosen[:, index]] == identity).all()
    assert strength_range("gamma", 5) == pytest.approx((1 / 1.25, 1.25))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_with_a_seed_and_different_without(xrays, device):
    augment = IntensityAugment(magnitude=7)
    images = xrays.to(device)
    torch.manual_seed(3)
    first = augment(images)
    torch.manual_seed(3)
    assert torch.equal(augment(images), first)
    assert not torch.equal(augment(images), first)
    generator = torch.Generator(device).manual_seed(5)
    again = torch.Generator(device).manual_seed(5)
    assert torch.equal(augment(images, generator), augment(images, again))
    assert first.device == images.device


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8])
def test_range_dtype_and_shape_kept(dtype):
    torch.manual_seed(0)
    extremes = torch.cat([torch.zeros(4, 1, 16, 16), torch.full((4, 1, 16, 16), 255.0)])
    extremes[:, :, ::2] = 255 - extremes[:, :, ::2]  # stripes: sharpening overshoots both ends
    images = extremes.to(dtype)
    before = images.clone()
    for shape in [(8, 1, 16, 16), (8, 16, 16)]:
        out = IntensityAugment(num_ops=5, magnitude=10)(images.reshape(shape))
        assert out.shape == shape and out.dtype == dtype
        assert out.float().min() >= 0 and out.float().max() <= 255
    assert torch.equal(images, before)  # the input is not modified


def test_bad_arguments_say_what_is_valid():
    with pytest.raises(ValueError, match=r"unknown intensity augmentation op\(s\) \['flip'\]; valid ops: brightness"):
        IntensityAugment.from_args("brightness,flip", 5)
    with pytest.raises(ValueError, match=r"magnitude must be in \[0, 10\]"):
        IntensityAugment(magnitude=11)
    with pytest.raises(ValueError, match="use from_args"):
        IntensityAugment(ops="gamma")
    with pytest.raises(ValueError, match="expected batches"):
        IntensityAugment()(torch.zeros(16, 16))
    parsed = IntensityAugment.from_args(" Noise, gamma ", 3, num_ops=1)
    assert parsed == IntensityAugment(ops=("gamma", "noise"), num_ops=1, magnitude=3)
    assert IntensityAugment.from_args("all", 5).ops == OPS
