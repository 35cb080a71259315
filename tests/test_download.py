"""scripts/download_nih.py's library against a loopback HTTP server serving small archives named as the release's."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
from conftest import MINI_FULL_CSV, MINI_IMAGES
from release_files import ReleaseServer

from cxr_vit.data.archives import write_archives
from cxr_vit.release import ChecksumMismatchError, DownloadError, download_files, download_with_kaggle, release_files
from cxr_vit.release.download import MANIFEST_NAME, summary
from cxr_vit.release.files import UrlListError


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Three archives of 60 mini images each and the label CSV, in a folder the server serves."""
    root = tmp_path_factory.mktemp("served")
    names = sorted(path.name for path in MINI_IMAGES.glob("*.png"))[:180]
    write_archives(MINI_IMAGES, names, root, count=3)
    (root / MINI_FULL_CSV.name).write_bytes(MINI_FULL_CSV.read_bytes())
    return root


def url_list(path, server, root, names, digests: dict | None = None):
    lines = []
    for name in names:
        extra = f" {(root / name).stat().st_size} {digests[name]}" if digests and name in digests else ""
        lines.append(f"{name} {server.url(name)}{extra}")
    path.write_text("# test mirror\n" + "\n".join(lines) + "\n")
    return path


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def all_names(root):
    return sorted(path.name for path in root.iterdir())


def test_concurrent_downloads_complete_and_are_recorded(served, tmp_path):
    names = all_names(served)
    with ReleaseServer(served) as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, served, names))
        results = download_files(files, tmp_path / "out", workers=4, progress=False)
    assert [result.name for result in results] == names
    assert {result.status for result in results} == {"fetched"}
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    for name in names:
        assert sha256(tmp_path / "out" / name) == sha256(served / name) == manifest[name]["sha256"]
    assert not list((tmp_path / "out").glob("*.part"))
    # a second run finds everything present and fetches nothing
    again = download_files(files, tmp_path / "out", workers=4, progress=False)
    assert {result.status for result in again} == {"present"}
    assert "present 4 (0.000 GB downloaded)" in summary(again)


def test_interrupted_download_resumes_with_a_range_request(served, tmp_path):
    name = "images_002.tar.gz"
    size = (served / name).stat().st_size
    cut = size // 3
    with ReleaseServer(served) as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, served, [name]))
        server.drop_after[name] = cut
        with pytest.raises(DownloadError, match=f"{name}: connection closed after {cut} of {size} bytes.*run again"):
            download_files(files, tmp_path / "out", retries=0, progress=False)
        assert (tmp_path / "out" / f"{name}.part").stat().st_size == cut
        assert not (tmp_path / "out" / name).exists()
        first = server.bytes_sent[name]
        (result,) = download_files(files, tmp_path / "out", retries=0, progress=False)
        second = server.bytes_sent[name] - first
    assert (result.status, result.bytes_fetched) == ("resumed", size - cut)
    assert first == cut and second == size - cut < size  # the second run fetched only the rest
    assert server.requests[-1] == (name, f"bytes={cut}-")
    assert sha256(tmp_path / "out" / name) == sha256(served / name)


def test_dropped_connection_is_resumed_within_one_run(served, tmp_path):
    name = "images_001.tar.gz"
    with ReleaseServer(served) as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, served, [name]))
        server.drop_after[name] = 1000
        (result,) = download_files(files, tmp_path / "out", retries=2, progress=False)
    assert result.status == "resumed"
    assert sha256(tmp_path / "out" / name) == sha256(served / name)


def test_a_corrupt_download_is_refused_and_kept_aside(served, tmp_path):
    name = "images_003.tar.gz"
    corrupt_root = tmp_path / "corrupt_mirror"
    corrupt_root.mkdir()
    data = bytearray((served / name).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    (corrupt_root / name).write_bytes(bytes(data))
    with ReleaseServer(corrupt_root) as server:
        urls = url_list(tmp_path / "urls.txt", server, served, [name], {name: sha256(served / name)})
        with pytest.raises(ChecksumMismatchError, match=f"{name}: SHA-256 .* expected {sha256(served / name)}"):
            download_files(release_files(urls), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / name).exists()
    assert (tmp_path / "out" / f"{name}.corrupt").read_bytes() == bytes(data)


def test_a_file_corrupted_after_download_is_refused_on_verify(served, tmp_path):
    name = MINI_FULL_CSV.name
    with ReleaseServer(served) as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, served, [name]))
        download_files(files, tmp_path / "out", progress=False)
        path = tmp_path / "out" / name
        text = path.read_bytes()
        path.write_bytes(text[:-2] + b"9\n")  # same size, other content: the manifest's digest catches it
        with pytest.raises(ChecksumMismatchError, match=name):
            download_files(files, tmp_path / "out", verify=True, progress=False)
    assert not path.exists() and (tmp_path / "out" / f"{name}.corrupt").exists()


def test_files_without_a_known_url_say_how_to_give_one(tmp_path, monkeypatch):
    monkeypatch.delenv("CXR_VIT_NIH_URLS", raising=False)
    monkeypatch.delenv("CXR_VIT_NIH_MIRROR", raising=False)
    files = release_files(names=["Data_Entry_2017_v2020.csv", "images_001.tar.gz"])
    assert files[1].url.startswith("https://nihcc.box.com/shared/static/")
    with pytest.raises(DownloadError, match="no URL is known for Data_Entry_2017_v2020.csv: pass --urls FILE"):
        download_files(files, tmp_path, progress=False)
    monkeypatch.setenv("CXR_VIT_NIH_MIRROR", "https://mirror.example/nih/")
    assert release_files(names=["test_list.txt"])[0].url == "https://mirror.example/nih/test_list.txt"
    (tmp_path / "bad.txt").write_text("images_001.tar.gz http://x 12 not-a-digest\n")
    with pytest.raises(UrlListError, match="bad.txt line 1: 'not-a-digest' is not a SHA-256"):
        release_files(tmp_path / "bad.txt")


def test_kaggle_says_what_to_do_and_calls_the_cli(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no_config"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    with pytest.raises(DownloadError, match="not installed: pip install kaggle"):
        download_with_kaggle(tmp_path / "out")
    cli = bin_dir / "kaggle"
    cli.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "args.txt"}\n')
    cli.chmod(cli.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(DownloadError, match="not configured.*kaggle.json"):
        download_with_kaggle(tmp_path / "out")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    download_with_kaggle(tmp_path / "out")
    args = (tmp_path / "args.txt").read_text().split()
    assert args[:4] == ["datasets", "download", "-d", "nih-chest-xrays/data"] and "--unzip" in args
    assert os.fspath(tmp_path / "out") in args
