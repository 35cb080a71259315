"""The fast input path: uint8 memmap cache, batch-reading dataset, batch transforms on the device."""

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

from cxr_vit.data.cache import cache_image_size, default_cache_dir, ensure_cache, read_meta, square_uint8, write_cache
from cxr_vit.data.cached_dataset import CachedImageDataset, collate_batch
from cxr_vit.data.gpu_augment import BatchImageTransform, affine_grid, crop_affine_theta
from cxr_vit.data.transforms import ImageTransform, collate_fn, create_eval_transform, to_rgb
from cxr_vit.metrics import multilabel_metrics
from cxr_vit.modeling import create_model, data_config


def config(size: int, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> dict:
    return {"input_size": (3, size, size), "interpolation": "bicubic", "mean": mean, "std": std, "crop_pct": 0.9}


@pytest.fixture(scope="module")
def validation(prepared_mini):
    return datasets.load_dataset(str(prepared_mini))["validation"]


@pytest.fixture(scope="module")
def cache_dir(validation, tmp_path_factory):
    return ensure_cache(validation, tmp_path_factory.mktemp("cache") / "validation-71px", 71)


# ---- cache -----------------------------------------------------------------------------------------


def test_cache_holds_every_image_once_decoded(validation, cache_dir):
    images = np.load(cache_dir / "images.npy", mmap_mode="r")
    assert images.shape == (len(validation), 71, 71) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[3], square_uint8(validation[3]["image"], 71))
    np.testing.assert_array_equal(np.load(cache_dir / "labels.npy"), np.asarray(validation["labels"], np.float32))


def test_cache_is_reused_and_rebuilt_when_stale(validation, tmp_path):
    directory = tmp_path / "validation-71px"
    ensure_cache(validation, directory, 71)
    built = (directory / "images.npy").stat().st_mtime_ns
    ensure_cache(validation, directory, 71)
    assert (directory / "images.npy").stat().st_mtime_ns == built  # reused
    ensure_cache(validation.select(range(10)), directory, 71)  # another dataset: stale
    assert read_meta(directory)["num_rows"] == 10 and len(CachedImageDataset(directory)) == 10
    ensure_cache(validation.select(range(10)), directory, 64)  # another size: stale
    assert np.load(directory / "images.npy").shape == (10, 64, 64)
    assert [path.name for path in tmp_path.iterdir()] == ["validation-71px"]  # no staging folder left


def test_cache_size_and_location(prepared_mini, tmp_path, monkeypatch):
    vit_b = {"input_size": (3, 224, 224), "crop_pct": 0.9, "crop_mode": "center"}
    assert cache_image_size(vit_b) == 248
    assert cache_image_size({"input_size": (3, 64, 64), "crop_pct": 0.9}) == 71
    with pytest.raises(ValueError, match="center"):
        cache_image_size({**vit_b, "crop_mode": "squash"})
    assert default_cache_dir(str(prepared_mini), "train", 248) == prepared_mini / "cache" / "train-248px"
    assert default_cache_dir("you/nih", "train", 248, root="/r") == Path("/r/train-248px")
    monkeypatch.delenv("CXR_VIT_CACHE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HOME", str(tmp_path))  # a Hub id: beside the Hub caches
    assert default_cache_dir("you/nih", "train", 248) == tmp_path / "cxr_vit" / "you--nih" / "train-248px"
    monkeypatch.setenv("CXR_VIT_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_dir("you/nih", "train", 248) == tmp_path / "elsewhere" / "you--nih" / "train-248px"


def test_square_uint8_center_crops_non_square_images():
    image = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8), (20, 1)))  # 40 wide, 20 high
    assert square_uint8(image, 20)[0].tolist() == list(range(10, 30))


# ---- batch dataset ---------------------------------------------------------------------------------


def test_getitems_reads_one_sorted_batch(validation, cache_dir):
    dataset = CachedImageDataset(cache_dir)
    batch = dataset.__getitems__([7, 2, 5])
    assert batch["pixel_values"].shape == (3, 71, 71) and batch["pixel_values"].dtype == torch.uint8
    expected_labels = np.asarray(validation.select([2, 5, 7])["labels"], np.float32)
    np.testing.assert_array_equal(batch["labels"].numpy(), expected_labels)  # sorted, labels still aligned
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
    from cxr_vit.benchmark import measure_worker_memory

    tile = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    count = 1536  # 24 MB
    write_cache(tmp_path / "c", lambda a, b: [Image.fromarray(tile)] * (b - a), np.zeros((count, 15)), 128)
    memory = measure_worker_memory(tmp_path / "c")
    assert memory["workers"] == 2 and memory["cache_mb"] == pytest.approx(24, abs=0.1)
    assert memory["max_worker_private_growth_mb"] < 6  # a copy of the cache would be 12-24 MB
    assert memory["max_worker_cache_mapped_mb"] > 6  # the reads went through the shared mapping


# ---- batch transforms ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 224])
def test_eval_path_reproduces_timm_eval_transform(validation, size):
    cfg = config(size)
    reference_transform = timm.data.create_transform(**cfg, is_training=False)
    images = [validation[i]["image"].resize((256, 256), Image.Resampling.BICUBIC) for i in range(6)]
    reference = torch.stack([reference_transform(to_rgb(image)) for image in images])
    transform = BatchImageTransform(cfg)
    cached = torch.from_numpy(np.stack([square_uint8(image, cache_image_size(cfg)) for image in images]))
    assert torch.equal(transform(cached, training=False), reference)  # cache at the eval resize size: exact
    unresized = torch.from_numpy(np.stack([np.asarray(image) for image in images]))
    difference = (transform(unresized, training=False) - reference).abs()  # resized on the device
    assert difference.max() < 3 / 255 / 0.224 and difference.mean() < 0.01


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


# ---- same metrics on both input paths ----------------------------------------------------------------


@torch.no_grad()
def test_eval_metrics_agree_between_datasets_and_cache_paths(validation, cache_dir):
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", pretrained=False, image_size=64, model_kwargs={"depth": 2}).eval()
    model_config = data_config(model)
    assert cache_image_size(model_config) == 71
    reference = validation.with_transform(ImageTransform(create_eval_transform(model_config)))
    probabilities = []
    for batch in DataLoader(reference, batch_size=32, collate_fn=collate_fn):
        probabilities.append(torch.sigmoid(model(pixel_values=batch["pixel_values"]).logits))
    transform = BatchImageTransform(model_config)
    cached = []
    for batch in DataLoader(CachedImageDataset(cache_dir), batch_size=32, collate_fn=collate_batch):
        cached.append(torch.sigmoid(model(pixel_values=transform(batch["pixel_values"], training=False)).logits))
    labels = np.asarray(validation["labels"])
    expected = multilabel_metrics(torch.cat(probabilities).numpy(), labels)
    actual = multilabel_metrics(torch.cat(cached).numpy(), labels)
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=1e-6), name
