"""Fetch the release's files: several at a time, resumed after an interruption, verified before use.

Each file is written to ``<name>.part`` and renamed to its name only once its size and digest are checked, so a
file under its real name is always complete. A ``.part`` left by an interrupted run is continued with an HTTP
Range request (a server that ignores Range sends it whole again). The size checked is the one the file list
records, else the one the server announces; the SHA-256 checked is the list's, else the one computed when the
file first arrived, kept in ``download_manifest.json`` beside the files. A file whose digest does not match is
moved aside to ``<name>.corrupt`` and never used.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import write_json_atomic
from ..data.provenance import file_sha256
from .files import MIRROR_ENV, ReleaseFile

logger = logging.getLogger(__name__)

MANIFEST_NAME = "download_manifest.json"
PART_SUFFIX = ".part"
CORRUPT_SUFFIX = ".corrupt"
KAGGLE_DATASET = "nih-chest-xrays/data"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched or verified; the message names it and what to do."""


class ChecksumMismatchError(DownloadError):
    """A file's SHA-256 differs from the recorded one; the file was moved aside to ``<name>.corrupt``."""


class _Incomplete(OSError):
    """The connection ended before the announced size: retried with a Range request."""


@dataclass
class DownloadResult:
    """One file's outcome: ``fetched`` (from zero), ``resumed`` (continued a partial file) or ``present``."""

    name: str
    status: str
    size: int
    sha256: str
    bytes_fetched: int = 0


class Manifest:
    """``download_manifest.json``: size, SHA-256, URL and modification time of each verified file."""

    def __init__(self, folder: Path):
        self.path = folder / MANIFEST_NAME
        self.entries = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self._lock = threading.Lock()

    def get(self, name: str) -> dict | None:
        return self.entries.get(name)

    def record(self, name: str, path: Path, sha256: str, url: str | None) -> None:
        stat = path.stat()
        with self._lock:
            self.entries[name] = {"size": stat.st_size, "sha256": sha256, "url": url, "mtime_ns": stat.st_mtime_ns}
            write_json_atomic(self.path, self.entries, sort_keys=True)


def download_files(
    files: list[ReleaseFile],
    output_dir: str | os.PathLike,
    workers: int = 4,
    retries: int = 3,
    timeout: float = 60.0,
    verify: bool = False,
    progress: bool = True,
) -> list[DownloadResult]:
    """Fetch ``files`` into ``output_dir`` (``workers`` at a time) and return what happened to each, in order.

    A file already there is taken when its size and modification time are those recorded when it was verified
    (``verify``: hash it again anyway); one not recorded is hashed and checked once. A dropped connection is
    resumed up to ``retries`` times. Raises :class:`DownloadError` after all files were tried, naming each failure.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    no_url = [entry.name for entry in files if not entry.url and not (output_dir / entry.name).is_file()]
    if no_url:
        raise DownloadError(
            f"no URL is known for {', '.join(no_url)}: pass --urls FILE (one 'name url [size [sha256]]' per line), "
            f"or set {MIRROR_ENV} to the base URL of a mirror, or put the files in {output_dir} yourself"
        )
    manifest = Manifest(output_dir)

    def fetch(entry: ReleaseFile) -> DownloadResult | DownloadError:
        try:
            return _fetch(entry, output_dir, manifest, retries, timeout, verify, progress)
        except DownloadError as err:
            return err

    with ThreadPoolExecutor(max(1, workers)) as pool:
        outcomes = list(pool.map(fetch, files))
    failures = [str(outcome) for outcome in outcomes if isinstance(outcome, DownloadError)]
    if failures:
        error_type = ChecksumMismatchError if any(isinstance(o, ChecksumMismatchError) for o in outcomes) else None
        raise (error_type or DownloadError)(
            f"{len(failures)} of {len(files)} file(s) failed:\n  " + "\n  ".join(failures)
        )
    return outcomes


def summary(results: list[DownloadResult]) -> str:
    """One line per status: which files were fetched, resumed or already present, and the bytes fetched."""
    lines = []
    for status in ("fetched", "resumed", "present"):
        chosen = [result for result in results if result.status == status]
        if chosen:
            fetched = sum(result.bytes_fetched for result in chosen)
            names = ", ".join(result.name for result in chosen)
            lines.append(f"{status} {len(chosen)} ({fetched / 1e9:.3f} GB downloaded): {names}")
    return "\n".join(lines)


def _fetch(entry, output_dir, manifest, retries, timeout, verify, progress) -> DownloadResult:
    target = output_dir / entry.name
    if target.is_file():
        recorded = manifest.get(entry.name)
        stat = target.stat()
        if recorded and not verify and (recorded["size"], recorded["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
            sha256 = recorded["sha256"]
        else:
            sha256 = file_sha256(target)
        _check(entry, target, stat.st_size, sha256, recorded)
        if recorded is None or recorded["sha256"] != sha256:
            manifest.record(entry.name, target, sha256, entry.url)
        return DownloadResult(entry.name, "present", stat.st_size, sha256)
    part = target.with_name(target.name + PART_SUFFIX)
    resumed = part.is_file() and part.stat().st_size > 0
    fetched = 0
    for attempt in range(retries + 1):
        try:
            got, complete = _transfer(entry, part, timeout, progress)
            fetched += got
            if complete:
                break
        except (_Incomplete, urllib.error.URLError, OSError, http.client.HTTPException) as err:
            fetched += getattr(err, "fetched", 0)
            have = part.stat().st_size if part.is_file() else 0
            if attempt == retries:
                raise DownloadError(
                    f"{entry.name}: {err}; the {have} bytes received are kept in {part}: run again to resume"
                ) from err
            resumed = resumed or have > 0
            logger.warning("%s: %s; resuming from byte %d", entry.name, err, have)
    size = part.stat().st_size
    sha256 = file_sha256(part)
    _check(entry, part, size, sha256, None)
    os.replace(part, target)
    manifest.record(entry.name, target, sha256, entry.url)
    return DownloadResult(entry.name, "resumed" if resumed else "fetched", size, sha256, fetched)


def _check(entry: ReleaseFile, path: Path, size: int, sha256: str, recorded: dict | None) -> None:
    """Raise (the file moved aside) when the size or digest differs from the list's or the manifest's."""
    expected_size = entry.size or (recorded or {}).get("size")
    expected_sha = entry.sha256 or (recorded or {}).get("sha256")
    problem = None
    if expected_size is not None and size != expected_size:
        problem = f"size {size} bytes, expected {expected_size}"
    elif expected_sha is not None and sha256 != expected_sha:
        problem = f"SHA-256 {sha256}, expected {expected_sha}"
    if problem:
        aside = path.with_name(entry.name + CORRUPT_SUFFIX)
        os.replace(path, aside)
        raise ChecksumMismatchError(
            f"{entry.name}: {problem}; the file is corrupt and was moved to {aside} (not used). Run again to "
            "download it afresh, or check the URL list if a mirror serves another version"
        )


def _transfer(entry: ReleaseFile, part: Path, timeout: float, progress: bool) -> tuple[int, bool]:
    """Continue ``part`` from its current size; returns (bytes fetched, whether it is now complete)."""
    start = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={start}-"} if start else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(entry.url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        total = _content_range_total(err.headers.get("Content-Range"))
        if err.code == 416 and total is not None and total == start:
            return 0, True  # the part was complete when the last run stopped
        raise DownloadError(f"{entry.name}: HTTP {err.code} {err.reason} from {entry.url}") from err
    with response:
        if start and response.status != 206:
            start = 0  # the server ignored the Range: it sends the whole file
        total = _content_range_total(response.headers.get("Content-Range"))
        if total is None and response.headers.get("Content-Length") is not None:
            total = start + int(response.headers["Content-Length"])
        if entry.size is not None and total is not None and total != entry.size:
            raise DownloadError(f"{entry.name}: the server announces {total} bytes, the file list {entry.size}")
        fetched = 0
        with (
            open(part, "ab" if start else "wb") as out,
            tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=entry.name, disable=not progress) as bar,
        ):
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                fetched += len(chunk)
                bar.update(len(chunk))
    if total is not None and start + fetched < total:
        error = _Incomplete(f"connection closed after {start + fetched} of {total} bytes")
        error.fetched = fetched
        raise error
    return fetched, True


def _content_range_total(value: str | None) -> int | None:
    match = re.search(r"/(\d+)\s*$", value or "")
    return int(match.group(1)) if match else None


def download_with_kaggle(output_dir: str | os.PathLike) -> Path:
    """Fetch Kaggle's ``nih-chest-xrays/data`` with the Kaggle CLI (unpacked: ``images_NNN/images/...``)."""
    executable = shutil.which("kaggle")
    setup = (
        "create an API token (kaggle.com -> Settings -> API -> Create New Token), save it as ~/.kaggle/kaggle.json "
        "(chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY, accept the dataset's terms on its page, then run again"
    )
    if executable is None:
        raise DownloadError(f"--kaggle needs the Kaggle CLI, which is not installed: pip install kaggle; {setup}")
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    if not (config_dir / "kaggle.json").is_file() and not (
        os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")
    ):
        raise DownloadError(
            f"the Kaggle CLI is installed but not configured (no {config_dir / 'kaggle.json'}): {setup}"
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    command = [executable, "datasets", "download", "-d", KAGGLE_DATASET, "-p", str(output_dir), "--unzip"]
    logger.info("running %s", " ".join(command))
    if subprocess.run(command, check=False).returncode != 0:
        raise DownloadError(f"{' '.join(command)} failed (its message is above)")
    return output_dir
