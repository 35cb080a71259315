"""scripts/download_nih.py's library against a loopback HTTP server serving small archives named as the release's."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tarfile

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


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """A 2.6 MB archive (one member of random bytes: gzip cannot shrink it), to be cut into several pieces."""
    root = tmp_path_factory.mktemp("large")
    member = os.urandom(2_600_000)
    with tarfile.open(root / "images_009.tar.gz", "w:gz", compresslevel=1) as archive:
        info = tarfile.TarInfo("images/00000001_000.png")
        info.size = len(member)
        archive.addfile(info, io.BytesIO(member))
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
    assert server.requests[-1] == (name, f"bytes={cut}-") and server.log[-1]["if_range"].startswith('"')
    assert sha256(tmp_path / "out" / name) == sha256(served / name)


def test_dropped_connection_is_resumed_within_one_run(served, tmp_path):
    name = "images_001.tar.gz"
    with ReleaseServer(served) as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, served, [name]))
        server.drop_after[name] = 1000
        (result,) = download_files(files, tmp_path / "out", retries=2, backoff=0.01, progress=False)
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
    # run again against a mirror serving a corrupt copy of the same size: the manifest's digest refuses it too
    good = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())[name]["sha256"]
    mirror = tmp_path / "corrupt_mirror"
    mirror.mkdir()
    (mirror / name).write_bytes(text[:-2] + b"7\n")
    with ReleaseServer(mirror) as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, mirror, [name]))
        with pytest.raises(ChecksumMismatchError, match=f"{name}: SHA-256 .* expected {good} from {MANIFEST_NAME}"):
            download_files(files, tmp_path / "out", retries=0, progress=False)
    assert not path.exists() and (tmp_path / "out" / f"{name}.corrupt").read_bytes() == text[:-2] + b"7\n"
    assert json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())[name]["sha256"] == good == sha256(served / name)


def test_every_byte_received_before_a_reset_is_kept(large, tmp_path):
    name = "images_009.tar.gz"
    size = (large / name).stat().st_size
    with ReleaseServer(large) as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, large, [name]))
        server.reset_every[name] = 900_000  # each response ends in a TCP reset after 900 kB
        part, kept = tmp_path / "out" / f"{name}.part", []
        for _ in range(size // 900_000):
            with pytest.raises(DownloadError, match=f"{name}: connection lost after .*kept in .*run again"):
                download_files(files, tmp_path / "out", retries=0, progress=False)
            kept.append(part.stat().st_size)
        (result,) = download_files(files, tmp_path / "out", retries=0, progress=False)
    assert kept == [900_000 * run for run in range(1, size // 900_000 + 1)]  # each run keeps all it received
    assert result.status == "resumed" and sha256(tmp_path / "out" / name) == sha256(large / name)


def test_a_cut_archive_sent_without_a_length_is_not_taken_as_complete(large, tmp_path):
    name = "images_009.tar.gz"
    with ReleaseServer(large, lengths=False) as server:  # no Content-Length, no size in the list
        files = release_files(url_list(tmp_path / "urls.txt", server, large, [name]))
        server.drop_after[name] = 1_500_000
        with pytest.raises(DownloadError, match=f"{name}: the connection closed after 1500000 bytes, before the gzip"):
            download_files(files, tmp_path / "out", retries=0, progress=False)
        assert not (tmp_path / "out" / name).exists()
        (result,) = download_files(files, tmp_path / "out", retries=0, progress=False)
    assert result.status == "resumed" and server.requests[-1] == (name, "bytes=1500000-")
    assert sha256(tmp_path / "out" / name) == sha256(large / name)


def test_a_file_whose_completeness_cannot_be_checked_says_so(served, tmp_path, caplog):
    name = MINI_FULL_CSV.name  # not gzip, no length sent, no size or digest listed
    with ReleaseServer(served, lengths=False) as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, served, [name]))
        with caplog.at_level(logging.WARNING, logger="cxr_vit.release.download"):
            download_files(files, tmp_path / "out", progress=False)
    assert f"{name}: neither its length nor its digest is known: taken as complete as received" in caplog.text


def test_a_corrupt_archive_is_refused_without_a_known_digest(served, tmp_path):
    name = "images_001.tar.gz"
    data = bytearray((served / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / name).write_bytes(bytes(data))
    with ReleaseServer(tmp_path / "mirror") as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, served, [name]))  # no size, no digest
        with pytest.raises(ChecksumMismatchError, match=f"{name}: its gzip stream is corrupt"):
            download_files(files, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / name).exists() and (tmp_path / "out" / f"{name}.corrupt").exists()
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()  # nothing recorded


def test_a_part_longer_than_the_servers_file_is_started_again(served, tmp_path):
    name = MINI_FULL_CSV.name
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / f"{name}.part").write_bytes((served / name).read_bytes() + b"left from another version")
    with ReleaseServer(served) as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, served, [name]))
        (result,) = download_files(files, tmp_path / "out", retries=0, progress=False)
    assert result.status == "fetched" and sha256(tmp_path / "out" / name) == sha256(served / name)


def test_a_file_changed_on_the_server_is_fetched_whole_not_spliced(served, tmp_path):
    name = "images_002.tar.gz"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(served / name, mirror / name)
    with ReleaseServer(mirror) as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, mirror, [name]))
        server.drop_after[name] = 5000
        with pytest.raises(DownloadError, match="5000 bytes received"):
            download_files(files, tmp_path / "out", retries=0, progress=False)
        shutil.copy(served / "images_003.tar.gz", mirror / name)  # a new version under the same name
        (result,) = download_files(files, tmp_path / "out", retries=0, progress=False)
    assert sha256(tmp_path / "out" / name) == sha256(served / "images_003.tar.gz")  # not 5000 old bytes + new
    assert result.status == "fetched"
    first, second = server.log
    assert first["if_range"] is None and second["range"] == "bytes=5000-" and second["if_range"].startswith('"')


def test_a_server_ignoring_range_sends_the_file_whole_and_it_is_fetched(served, tmp_path):
    name = "images_001.tar.gz"
    size = (served / name).stat().st_size
    with ReleaseServer(served, ranges=False) as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, served, [name]))
        server.drop_after[name] = 1000
        (result,) = download_files(files, tmp_path / "out", retries=1, backoff=0.01, progress=False)
    assert [request[1] for request in server.requests] == [None, "bytes=1000-"]
    assert (result.status, result.bytes_fetched) == ("fetched", 1000 + size)
    assert "fetched 1 " in summary([result]) and "resumed" not in summary([result])


def test_failed_attempts_back_off_and_honour_retry_after(served, tmp_path):
    name = MINI_FULL_CSV.name
    with ReleaseServer(served) as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, served, [name]))
        server.fail[name] = [(503, "1"), (429, "3600"), (500, None), (502, None)]
        (result,) = download_files(files, tmp_path / "out", retries=4, backoff=0.05, max_wait=1.5, progress=False)
    times = [entry["time"] for entry in server.log]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert len(gaps) == 4
    assert gaps[0] >= 1.0  # Retry-After: 1
    assert 1.5 <= gaps[1] < 3  # Retry-After: 3600, bounded by max_wait
    assert gaps[2] >= 0.2 and gaps[3] >= 0.4 and max(gaps[2:]) < 1.4  # 0.05 s doubled at each retry: 0.2, 0.4
    assert result.status == "fetched" and sha256(tmp_path / "out" / name) == sha256(served / name)
    with ReleaseServer(served) as server:  # a 404 is not retried
        files = release_files(url_list(tmp_path / "urls.txt", server, served, ["missing.txt"]))
        with pytest.raises(DownloadError, match="missing.txt: HTTP 404 .*; nothing of it was received"):
            download_files(files, tmp_path / "out", retries=3, backoff=0.01, progress=False)
        assert len(server.log) == 1


def test_a_failure_says_nothing_is_kept_when_nothing_arrived(served, tmp_path):
    name = MINI_FULL_CSV.name
    with ReleaseServer(served) as server:
        files = release_files(url_list(tmp_path / "urls.txt", server, served, [name]))
    # the server is gone: every connection is refused
    with pytest.raises(DownloadError) as raised:
        download_files(files, tmp_path / "out", retries=1, backoff=0.01, progress=False)
    assert f"{name}: no answer from" in str(raised.value) and "nothing of it was received" in str(raised.value)
    assert "kept" not in str(raised.value) and not (tmp_path / "out" / f"{name}.part").exists()


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
