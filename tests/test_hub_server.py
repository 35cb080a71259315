"""Real huggingface_hub / datasets / transformers flows against the local Hub-compatible test server.

The clients run in-process: ``point_hf_clients_at`` patches the endpoint constants they froze at import (see
the ``hub_server`` module docstring), and a pytest ``monkeypatch`` undoes it after each test. One test also
checks the subprocess route (``HF_ENDPOINT`` set in the environment before ``huggingface_hub`` is imported).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hub_server import HubServer, point_hf_clients_at


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with HubServer(tmp_path / "hub-storage") as server:
        point_hf_clients_at(server.endpoint, monkeypatch, token=server.token, cache_dir=tmp_path / "hf-home")
        yield server


def test_upload_folder_then_download(hub, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    folder = tmp_path / "upload"
    (folder / "weights").mkdir(parents=True)
    (folder / "notes.txt").write_text("a small text file\n")
    big = os.urandom(1_500_000)  # binary and > 1 MB: must travel through git-LFS
    (folder / "weights" / "blob.bin").write_bytes(big)

    api = HfApi()
    repo_url = api.create_repo("cxr-vit/roundtrip", private=True)
    assert repo_url.repo_id == "cxr-vit/roundtrip"
    commit = api.upload_folder(repo_id="cxr-vit/roundtrip", folder_path=folder, commit_message="add files")
    assert any(method == "PUT" and path.startswith("/__lfs__/models/") for method, path, _ in hub.requests)

    text_path = hf_hub_download("cxr-vit/roundtrip", "notes.txt")
    big_path = hf_hub_download("cxr-vit/roundtrip", "weights/blob.bin", revision=commit.oid)
    assert Path(text_path).read_text() == "a small text file\n"
    assert Path(big_path).read_bytes() == big

    snapshot = Path(snapshot_download("cxr-vit/roundtrip", cache_dir=tmp_path / "snapshot-cache"))
    assert (snapshot / "notes.txt").read_text() == "a small text file\n"
    assert (snapshot / "weights" / "blob.bin").read_bytes() == big

    info = api.model_info("cxr-vit/roundtrip", files_metadata=True)
    files = {sibling.rfilename: sibling for sibling in info.siblings}
    assert info.sha == commit.oid and info.private is True
    assert sorted(files) == sorted(api.list_repo_files("cxr-vit/roundtrip"))
    assert sorted(files) == [".gitattributes", "notes.txt", "weights/blob.bin"]
    assert files["weights/blob.bin"].lfs.size == len(big) and files["notes.txt"].lfs is None

    # Re-uploading identical content is a no-op commit; deleting a file creates a new commit.
    assert api.upload_folder(repo_id="cxr-vit/roundtrip", folder_path=folder).oid == commit.oid
    api.delete_file("notes.txt", repo_id="cxr-vit/roundtrip")
    assert api.list_repo_files("cxr-vit/roundtrip") == [".gitattributes", "weights/blob.bin"]


def test_range_requests_and_missing_entries(hub):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi()
    api.create_repo("cxr-vit/ranges")
    api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="digits.txt", repo_id="cxr-vit/ranges")
    url = f"{hub.endpoint}/cxr-vit/ranges/resolve/main/digits.txt"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=2-4"})) as response:
        assert response.status == 206 and response.read() == b"234"
        assert response.headers["Content-Range"] == "bytes 2-4/10"

    with pytest.raises(EntryNotFoundError):
        hf_hub_download("cxr-vit/ranges", "missing.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("cxr-vit/ranges", "digits.txt", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("cxr-vit/does-not-exist")


def test_dataset_push_to_hub_then_load_dataset(hub, tmp_path):
    import datasets
    import numpy as np
    from PIL import Image

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "labels": datasets.List(datasets.Value("float32"), length=3),
            "patient": datasets.Value("string"),
        }
    )

    def split(n: int, seed: int) -> datasets.Dataset:
        rng = np.random.default_rng(seed)
        images = [Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L") for _ in range(n)]
        labels = rng.integers(0, 2, (n, 3)).astype("float32").tolist()
        patients = [f"p{seed}-{i}" for i in range(n)]
        return datasets.Dataset.from_dict({"image": images, "labels": labels, "patient": patients}, features=features)

    pushed = datasets.DatasetDict({"train": split(6, 0), "test": split(3, 1)})
    pushed.push_to_hub("cxr-vit/tiny-cxr")

    loaded = datasets.load_dataset("cxr-vit/tiny-cxr", cache_dir=str(tmp_path / "ds-cache"))
    assert set(loaded) == {"train", "test"}
    for name in ("train", "test"):
        assert loaded[name].features == features
        assert _rows(loaded[name]) == _rows(pushed[name])

    streamed = datasets.load_dataset("cxr-vit/tiny-cxr", streaming=True)
    assert _rows(streamed["train"]) == _rows(pushed["train"])


def _rows(dataset) -> list[tuple]:
    """Comparable rows: images as (mode, size, pixel bytes)."""
    return [
        ((row["image"].mode, row["image"].size, row["image"].tobytes()), row["labels"], row["patient"])
        for row in dataset
    ]


def test_transformers_push_to_hub_then_from_pretrained(hub, tmp_path):
    import torch
    import transformers

    config = transformers.TimmWrapperConfig(architecture="vit_tiny_patch16_224", num_labels=3)
    torch.manual_seed(0)
    model = transformers.TimmWrapperForImageClassification(config).eval()
    model.push_to_hub("cxr-vit/tiny-vit")

    reloaded = transformers.AutoModelForImageClassification.from_pretrained("cxr-vit/tiny-vit").eval()
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(pixels).logits, reloaded(pixels).logits)


def test_wrong_token_fails_fast(hub, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    HfApi().create_repo("cxr-vit/public")
    HfApi().create_repo("cxr-vit/private", private=True)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token")
    api = HfApi()
    start = time.monotonic()
    with pytest.raises(HfHubHTTPError) as whoami_error:
        api.whoami()
    with pytest.raises(HfHubHTTPError) as create_error:
        api.create_repo("cxr-vit/other")
    assert whoami_error.value.response.status_code == 401
    assert create_error.value.response.status_code == 401
    assert "Invalid credentials" in str(create_error.value)
    assert time.monotonic() - start < 5  # no retries on 401

    # Without any token, public repos stay readable, private ones look missing and writes are refused.
    anonymous = HfApi(token=False)
    assert anonymous.model_info("cxr-vit/public").id == "cxr-vit/public"
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("cxr-vit/private")
    with pytest.raises(HfHubHTTPError):
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="cxr-vit/public")


def test_subprocess_client_and_restart(hub, tmp_path):
    """The env-var route (HF_ENDPOINT set before import) works too, and pushes survive a server restart."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("cxr-vit/persisted", repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"label,path\n", path_in_repo="meta.csv", repo_id="cxr-vit/persisted", repo_type="dataset"
    )
    hub.stop()
    script = (
        "from huggingface_hub import hf_hub_download, whoami;"
        "print(whoami()['name']);"
        "print(open(hf_hub_download('cxr-vit/persisted', 'meta.csv', repo_type='dataset')).read(), end='')"
    )
    with HubServer(hub.storage_dir, token=hub.token) as restarted:
        env = {
            **os.environ,
            "HF_ENDPOINT": restarted.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN": restarted.token,
            "HF_HOME": str(tmp_path / "subprocess-hf-home"),
        }
        env.pop("HF_HUB_OFFLINE", None)
        command = [sys.executable, "-c", script]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "test-user\nlabel,path\n"
