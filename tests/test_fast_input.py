"""The input path: one preprocessing (uint8 squares), the memmap cache, the batch-reading dataset, device transforms."""

import pickle
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm.data
import torch
import torch.nn.functional as F
from conftest import MINI_IMAGES
from PIL import Image
from torch.utils.data import DataLoader

from cxr_vit.data.cache import default_cache_dir, ensure_cache, read_meta, write_cache
from cxr_vit.data.cached_dataset import CachedImageDataset, collate_batch
from cxr_vit.data.gpu_augment import BatchImageTransform, affine_grid, crop_affine_theta
from cxr_vit.data.transforms import EvalGeometry, ModelImages, collate_images, eval_geometry, resize_for_model


def config(size: int, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), **overrides) -> dict:
    return {"input_size": (3, size, size), "interpolation": "bicubic", "mean": mean, "std": std, "crop_pct": 0.9,
            **overrides}  # fmt: skip


GEOMETRY_64 = eval_geometry(config(64))  # squares of 71 px


@pytest.fixture(scope="module")
def validation(prepared_mini):
    return datasets.load_dataset(str(prepared_mini))["validation"]


@pytest.fixture(scope="module")
def cache_dir(validation, tmp_path_factory):
    return ensure_cache(validation, tmp_path_factory.mktemp("cache") / "validation-71px", GEOMETRY_64)


# ---- cache -----------------------------------------------------------------------------------------


def test_cache_holds_every_image_once_decoded(validation, cache_dir):
    images = np.load(cache_dir / "images.npy", mmap_mode="r")
    assert images.shape == (len(validation), 71, 71) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[3], resize_for_model(validation[3]["image"], GEOMETRY_64))
    np.testing.assert_array_equal(np.load(cache_dir / "labels.npy"), np.asarray(validation["labels"], np.float32))


def test_cache_is_reused_and_rebuilt_when_stale(validation, tmp_path, caplog):
    directory = tmp_path / "validation-71px"
    ensure_cache(validation, directory, GEOMETRY_64)
    built = (directory / "images.npy").stat().st_mtime_ns
    ensure_cache(validation, directory, GEOMETRY_64)
    assert (directory / "images.npy").stat().st_mtime_ns == built  # reused
    ensure_cache(validation.select(range(10)), directory, GEOMETRY_64)  # another dataset: stale
    assert read_meta(directory)["num_rows"] == 10 and len(CachedImageDataset(directory)) == 10
    assert "rebuilding the image cache" in caplog.text and "ids_sha1" in caplog.text
    smaller = eval_geometry(config(56))  # another size: stale
    ensure_cache(validation.select(range(10)), directory, smaller)
    assert np.load(directory / "images.npy").shape == (10, 62, 62)
    bilinear = eval_geometry(config(56, interpolation="bilinear"))  # same size, other interpolation: stale
    caplog.clear()
    ensure_cache(validation.select(range(10)), directory, bilinear)
    assert "interpolation" in caplog.text and read_meta(directory)["interpolation"] == "bilinear"
    expected = np.stack([resize_for_model(validation[i]["image"], bilinear) for i in range(10)])
    np.testing.assert_array_equal(np.load(directory / "images.npy"), expected)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["validation-71px", "validation-71px.lock"]  # no staging


def test_geometry_and_cache_location(prepared_mini, tmp_path, monkeypatch):
    vit_b = {"input_size": (3, 224, 224), "crop_pct": 0.9, "crop_mode": "center", "interpolation": "bicubic"}
    assert eval_geometry(vit_b) == EvalGeometry(224, 248, "bicubic")
    assert eval_geometry({"input_size": (3, 64, 64), "crop_pct": 0.9}).resize_size == 71
    with pytest.raises(ValueError, match="center"):
        eval_geometry({**vit_b, "crop_mode": "squash"})
    with pytest.raises(ValueError, match="square"):
        eval_geometry({**vit_b, "input_size": (3, 224, 256)})
    geometry = eval_geometry(vit_b)
    assert default_cache_dir(str(prepared_mini), "train", geometry) == prepared_mini / "cache" / "train-248px-bicubic"
    assert default_cache_dir("you/nih", "train", geometry, root="/r") == Path("/r/train-248px-bicubic")
    monkeypatch.delenv("CXR_VIT_CACHE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HOME", str(tmp_path))  # a Hub id: beside the Hub caches
    expected = tmp_path / "cxr_vit" / "you--nih" / "train-248px-bicubic"
    assert default_cache_dir("you/nih", "train", geometry) == expected
    monkeypatch.setenv("CXR_VIT_CACHE", str(tmp_path / "elsewhere"))
    expected = tmp_path / "elsewhere" / "you--nih" / "train-248px-bicubic"
    assert default_cache_dir("you/nih", "train", geometry) == expected


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize(("size", "crop_pct"), [(64, 0.9), (224, 0.875), (32, 1.0)])
@pytest.mark.parametrize("shape", [(256, 256), (300, 256), (256, 301), (97, 180), (40, 30)])
def test_squares_then_device_crop_equal_timm_eval_transform(interpolation, size, crop_pct, shape):
    """The one preprocessing is bit for bit timm's eval transform (what AutoImageProcessor and pipeline apply),
    for square and non-square images, smaller and larger than the model's input."""
    cfg = config(size, crop_pct=crop_pct, interpolation=interpolation)
    source = np.asarray(Image.open(sorted(MINI_IMAGES.iterdir())[0]).resize((256, 256), Image.Resampling.BICUBIC))
    image = Image.fromarray(source).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    reference = timm.data.create_transform(**cfg, is_training=False)(image.convert("RGB"))
    square = torch.from_numpy(resize_for_model(image, eval_geometry(cfg)))
    ours = BatchImageTransform(cfg)(square[None], training=False)[0]
    assert torch.equal(ours, reference)


# ---- batch dataset ---------------------------------------------------------------------------------


def test_getitems_reads_one_batch_in_the_order_asked(validation, cache_dir):
    dataset = CachedImageDataset(cache_dir)
    batch = dataset.__getitems__([7, 2, 5, 2])  # a repeat, as a distributed evaluation pads its last batch
    assert batch["pixel_values"].shape == (4, 71, 71) and batch["pixel_values"].dtype == torch.uint8
    expected_labels = np.asarray(validation.select([7, 2, 5, 2])["labels"], np.float32)
    np.testing.assert_array_equal(batch["labels"].numpy(), expected_labels)  # the sampler's order, not sorted
    assert torch.equal(batch["pixel_values"][1], batch["pixel_values"][3])
    assert torch.equal(batch["pixel_values"][0], dataset[7]["pixel_values"])
    assert dataset[2]["pixel_values"].shape == (71, 71)


def test_dataloader_batches_and_workers_hold_no_copy(cache_dir):
    dataset = CachedImageDataset(cache_dir)
    assert isinstance(dataset.images, np.memmap)  # opened here, and still not pickled into workers
    assert len(pickle.dumps(dataset)) < 2_000
    loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=2, collate_fn=collate_batch)
    batches = list(loader)
    assert sum(len(batch["labels"]) for batch in batches) == len(dataset)
    assert batches[0]["pixel_values"].shape == (32, 71, 71)


def test_workers_memory_map_instead_of_copying(tmp_path):
    from cxr_vit.benchmarks.worker_memory import measure_worker_memory

    tile = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    count = 1536  # 24 MB
    squares = EvalGeometry(128, 128, "bicubic")
    write_cache(tmp_path / "c", lambda a, b: [Image.fromarray(tile)] * (b - a), np.zeros((count, 15)), squares)
    memory = measure_worker_memory(tmp_path / "c")
    assert memory["workers"] == 2 and memory["cache_mb"] == pytest.approx(24, abs=0.1)
    assert memory["max_worker_private_growth_mb"] < 6  # a copy of the cache would be 12-24 MB
    assert memory["max_worker_cache_mapped_mb"] > 6  # the reads went through the shared mapping


# ---- batch transforms ------------------------------------------------------------------------------


def test_eval_batch_takes_only_the_squares_it_was_built_for():
    transform = BatchImageTransform(config(64))
    assert transform(torch.zeros(2, 71, 71, dtype=torch.uint8), training=False).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="expected 71x71 squares"):
        transform(torch.zeros(2, 80, 80, dtype=torch.uint8), training=False)


def test_affine_grid_matches_torch():
    theta = crop_affine_theta(torch.rand(5, 2) - 0.5, torch.rand(5, 2) * 0.3 + 0.7, torch.randn(5), torch.randn(5, 2))
    expected = F.affine_grid(theta, [5, 1, 24, 24], align_corners=False)
    torch.testing.assert_close(affine_grid(theta, 24), expected, atol=1e-6, rtol=0)


def test_crop_affine_theta_geometry():
    one = torch.ones(1)
    identity = crop_affine_theta(torch.zeros(1, 2), torch.ones(1, 2), 0 * one, torch.zeros(1, 2))
    torch.testing.assert_close(identity, torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]))
    # the right half of the source, output shifted right by a quarter width
    crop = crop_affine_theta(torch.tensor([[0.5, 0.0]]), torch.tensor([[0.5, 1.0]]), 0 * one, torch.tensor([[0.5, 0]]))
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, 1.0, 1.0]])
    assert (corners @ crop[0].T).tolist() == [[-0.25, -1.0], [0.75, 1.0]]
    # 90 degrees: the output's right edge shows the source's top edge
    turned = crop_affine_theta(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([torch.pi / 2]), torch.zeros(1, 2))
    torch.testing.assert_close(turned[0] @ torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, -1.0]))


def test_train_path_without_randomness_is_a_plain_resize():
    cfg = config(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    transform = BatchImageTransform(cfg, scale=(1.0, 1.0), ratio=(1.0, 1.0), degrees=0.0, translate=0.0)
    images = torch.randint(0, 256, (10, 40, 40), dtype=torch.uint8)
    expected = F.interpolate(images[:, None].float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(transform(images, training=True), ((expected - 0.5) / 0.5).expand(-1, 3, -1, -1))


def test_train_path_augments_each_image_differently():
    transform = BatchImageTransform(config(64))
    image = torch.from_numpy(np.array(Image.open(sorted(MINI_IMAGES.iterdir())[0])))
    torch.manual_seed(0)
    batch = transform(image.expand(16, -1, -1).contiguous(), training=True)
    assert batch.shape == (16, 3, 64, 64) and batch.dtype == torch.float32 and torch.isfinite(batch).all()
    assert all(not torch.equal(batch[0], batch[i]) for i in range(1, 16))
    torch.manual_seed(0)
    assert torch.equal(transform(image.expand(16, -1, -1).contiguous(), training=True), batch)  # seeded
    black = (batch[:, 0] == (0 - 0.485) / 0.229).float().mean()  # fill from rotations / shifts
    assert black < 0.1
    with pytest.raises(ValueError, match="grayscale"):
        transform(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), training=True)


# ---- both input pipelines give the device the same squares -----------------------------------------


def test_datasets_pipeline_squares_equal_the_cache(validation, cache_dir):
    per_image = validation.with_transform(ModelImages(GEOMETRY_64))
    decoded = next(iter(DataLoader(per_image, batch_size=len(validation), collate_fn=collate_images)))
    cached = CachedImageDataset(cache_dir).__getitems__(list(range(len(validation))))
    assert torch.equal(decoded["pixel_values"], cached["pixel_values"])
    assert torch.equal(decoded["labels"], cached["labels"])
