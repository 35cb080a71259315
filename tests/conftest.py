"""Shared fixtures: the bundled real NIH mini set and a prepared copy of it; a tiny image cache.

The suite runs against caches of its own, made empty for each session before anything imports ``datasets`` or
``huggingface_hub`` (they read these variables once, at import), and inherited by the scripts the tests start: a
machine that ran the suite or the scripts before gives the same results as a new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

SESSION_CACHES = Path(tempfile.mkdtemp(prefix="cxr_vit_test_caches_"))
CACHE_VARIABLES = {
    "HF_HOME": "hf",
    "HF_DATASETS_CACHE": "hf/datasets",
    "HF_HUB_CACHE": "hf/hub",
    "HUGGINGFACE_HUB_CACHE": "hf/hub",
    "HF_ASSETS_CACHE": "hf/assets",
    "HF_MODULES_CACHE": "hf/modules",
    "HF_XET_CACHE": "hf/xet",
    "CXR_VIT_CACHE": "cxr_vit",  # the image caches of Hub datasets (cxr_vit.data.cache)
}
for _variable, _folder in CACHE_VARIABLES.items():
    os.environ[_variable] = str(SESSION_CACHES / _folder)

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "data" / "nih_mini"
MINI_IMAGES = MINI / "images"
MINI_KAGGLE_CSV = MINI / "sample_labels.csv"
MINI_FULL_CSV = MINI / "Data_Entry_2017_v2020.csv"
TEST_DATA = Path(__file__).resolve().parent / "data"
TINY_IMAGE_SIZE = 32  # vit_tiny at 32 px in training tests
TINY_CACHE_SIZE = 35  # its cache side: timm's eval resize size, floor(32 / crop_pct 0.9)


def tiny_cache(directory: Path, count: int = 64, size: int = TINY_CACHE_SIZE) -> Path:
    """A uint8 image cache of ``count`` synthetic films with random labels, for 32 px models."""
    import numpy as np
    from PIL import Image

    from cxr_vit.benchmarks.synthetic import synthetic_xray
    from cxr_vit.data.cache import write_cache
    from cxr_vit.data.transforms import EvalGeometry

    images = [Image.fromarray(synthetic_xray(index, size=size)) for index in range(count)]
    labels = (np.random.default_rng(0).random((count, 15)) < 0.2).astype(np.float32)
    geometry = EvalGeometry(min(TINY_IMAGE_SIZE, size), size, "bicubic")
    return write_cache(directory, lambda start, stop: images[start:stop], labels, geometry)


@pytest.fixture(scope="session")
def prepared_mini(tmp_path_factory) -> Path:
    """The bundled set prepared once with default settings (read-only for tests)."""
    from cxr_vit.data import prepare_dataset

    output = tmp_path_factory.mktemp("prepared") / "nih_mini"
    prepare_dataset(MINI_IMAGES, MINI_KAGGLE_CSV, output)
    return output


@pytest.fixture
def small_nih(tmp_path) -> tuple[Path, Path]:
    """A writable copy of a few whole patients of the mini set: (images_dir, kaggle_csv)."""
    frame = pd.read_csv(MINI_KAGGLE_CSV, dtype=str, keep_default_na=False)
    patients = frame["Patient ID"].drop_duplicates().head(12)
    frame = frame[frame["Patient ID"].isin(patients)]
    images = tmp_path / "images"
    images.mkdir()
    for name in frame["Image Index"]:
        shutil.copy(MINI_IMAGES / name, images / name)
    csv = tmp_path / "labels.csv"
    frame.to_csv(csv, index=False)
    return images, csv


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The loopback Hub (tests/hub_server.py), with this process's Hugging Face clients pointed at it."""
    from hub_server import HubServer, point_hf_clients_at

    with HubServer(tmp_path / "hub-storage") as server:
        point_hf_clients_at(server.endpoint, monkeypatch, token=server.token, cache_dir=tmp_path / "hf-home")
        yield server


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random-init model saved as train.py saves one, with thresholds that make only Effusion positive."""
    from inference_helpers import only_positive, save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", thresholds=only_positive("Effusion"))


@pytest.fixture(scope="module")
def predictor(model_dir):
    from cxr_vit.prediction import Predictor

    return Predictor.from_pretrained(model_dir, device="cpu")


def pytest_unconfigure(config) -> None:
    shutil.rmtree(SESSION_CACHES, ignore_errors=True)
