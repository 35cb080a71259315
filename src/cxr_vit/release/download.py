"""Fetch the release's files: several at a time, resumed after an interruption, verified before use.

Each file is written to ``<name>.part`` as its bytes arrive (a reset connection loses none of them) and renamed
to its name only once it is known to be complete and its digest is checked, so a file under its real name is
always whole. A ``.part`` left by an interrupted run is continued with an HTTP Range request carrying
``If-Range`` with the validator (ETag, else Last-Modified) its first bytes came with, kept in
``<name>.part.json``: a server whose file changed since sends it whole instead of the rest of another file. A
server that ignores Range sends it whole too (the file is then "fetched", not "resumed"); a ``.part`` longer than
the server's file (HTTP 416) is started again. Dropped connections, 5xx, 408 and 429 answers are retried with
exponential back-off, honouring a ``Retry-After`` up to a bound.

Complete means: as long as the file list says, else as the server announces (Content-Length / Content-Range),
and for a ``.tar.gz`` also a gzip stream that reaches its end with a matching CRC-32 and length (NIH publishes
no sizes and a server may send none, so the gzip trailer is what tells a cut archive from a whole one). The
SHA-256 checked is the list's, else the one recorded in ``download_manifest.json`` beside the files when the file
first arrived (a fresh download is checked against it too). A file whose size, gzip stream or digest does not
match is moved aside to ``<name>.corrupt`` and never used; the manifest keeps the good digest.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import write_json_atomic
from ..data.provenance import file_sha256
from .files import MIRROR_ENV, ReleaseFile

logger = logging.getLogger(__name__)

MANIFEST_NAME = "download_manifest.json"
PART_SUFFIX = ".part"
PART_INFO_SUFFIX = ".part.json"
CORRUPT_SUFFIX = ".corrupt"
KAGGLE_DATASET = "nih-chest-xrays/data"
RETRIED_HTTP_CODES = (408, 429, 500, 502, 503, 504)
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched or verified; the message names it and what to do."""


class ChecksumMismatchError(DownloadError):
    """A file's size, gzip stream or SHA-256 differs from what is known of it; it was moved to ``<name>.corrupt``."""


class _Retry(Exception):
    """One attempt failed in a way another may not: ``received`` bytes were written to the ``.part`` first."""

    def __init__(self, message: str, received: int = 0, retry_after: float | None = None):
        super().__init__(message)
        self.received = received
        self.retry_after = retry_after


class _Restart(Exception):
    """The ``.part`` cannot be continued (longer than the server's file, or begun on another version of it)."""


@dataclass
class DownloadResult:
    """One file's outcome: ``fetched`` (sent whole), ``resumed`` (the rest of a partial file) or ``present``."""

    name: str
    status: str
    size: int
    sha256: str
    bytes_fetched: int = 0


@dataclass(frozen=True)
class _Options:
    retries: int
    timeout: float
    verify: bool
    progress: bool
    backoff: float
    max_wait: float


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
    backoff: float = 1.0,
    max_wait: float = 60.0,
) -> list[DownloadResult]:
    """Fetch ``files`` into ``output_dir`` (``workers`` at a time) and return what happened to each, in order.

    A file already there is taken when its size and modification time are those recorded when it was verified
    (``verify``: hash it again anyway); one not recorded is hashed and checked once. A failed attempt is retried
    up to ``retries`` times, after ``backoff`` seconds doubled at each retry, or the server's ``Retry-After``;
    no wait is longer than ``max_wait``. Raises :class:`DownloadError` after all files were tried, naming each
    failure.
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
    options = _Options(retries, timeout, verify, progress, backoff, max_wait)

    def fetch(entry: ReleaseFile) -> DownloadResult | DownloadError:
        try:
            return _fetch(entry, output_dir, manifest, options)
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


def _fetch(entry: ReleaseFile, output_dir: Path, manifest: Manifest, options: _Options) -> DownloadResult:
    target = output_dir / entry.name
    recorded = manifest.get(entry.name)
    if target.is_file():
        stat = target.stat()
        if (
            recorded
            and not options.verify
            and (recorded["size"], recorded["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
        ):
            sha256 = recorded["sha256"]
        else:
            sha256 = file_sha256(target)
        _check(entry, target, stat.st_size, sha256, recorded)
        if recorded is None or recorded["sha256"] != sha256:
            manifest.record(entry.name, target, sha256, entry.url)
        return DownloadResult(entry.name, "present", stat.st_size, sha256)
    part = output_dir / (entry.name + PART_SUFFIX)
    received, attempt, restarted = 0, 0, False
    while True:
        try:
            got, resumed, length_known = _transfer(entry, part, options)
            received += got
            sha256, gzip_problem = _digest(part, entry.is_archive)
            if gzip_problem == _GZIP_CUT and not length_known:
                raise _Retry(f"the connection closed after {part.stat().st_size} bytes, before the gzip stream's end")
            if not (length_known or entry.is_archive or entry.sha256 or recorded):
                logger.warning(
                    "%s: neither its length nor its digest is known: taken as complete as received", entry.name
                )
            break
        except _Restart as err:
            if restarted:
                raise DownloadError(f"{entry.name}: {err}, again after starting over; check the URL") from err
            logger.warning("%s: %s; fetching it again from the start", entry.name, err)
            _discard(part)
            restarted = True
        except _Retry as err:
            received += err.received
            if attempt == options.retries:
                raise DownloadError(_failure(entry, part, f"{err} ({attempt + 1} attempt(s))")) from err
            wait = min(
                err.retry_after if err.retry_after is not None else options.backoff * 2**attempt, options.max_wait
            )
            have = part.stat().st_size if part.is_file() else 0
            then = f"resuming from byte {have}" if have else "trying again"
            logger.warning("%s: %s; %s in %.1f s", entry.name, err, then, wait)
            time.sleep(wait)
            attempt += 1
    size = part.stat().st_size
    _check(entry, part, size, sha256, recorded)
    if gzip_problem == _GZIP_CUT:
        _reject(entry, part, f"its gzip stream ends early, though all {size} bytes announced arrived (a cut copy)")
    if gzip_problem:
        _reject(entry, part, gzip_problem)
    os.replace(part, target)
    _info_path(part).unlink(missing_ok=True)
    manifest.record(entry.name, target, sha256, entry.url)
    return DownloadResult(entry.name, "resumed" if resumed else "fetched", size, sha256, received)


def _check(entry: ReleaseFile, path: Path, size: int, sha256: str, recorded: dict | None) -> None:
    """Raise (the file moved aside) when the size or digest differs from the list's or the manifest's."""
    expected_size = entry.size or (recorded or {}).get("size")
    expected_sha = entry.sha256 or (recorded or {}).get("sha256")
    if expected_size is not None and size != expected_size:
        _reject(entry, path, f"size {size} bytes, expected {expected_size}")
    if expected_sha is not None and sha256 != expected_sha:
        source = (
            "the file list"
            if entry.sha256
            else f"{MANIFEST_NAME}, recorded when it first arrived (remove its entry to accept another version)"
        )
        _reject(entry, path, f"SHA-256 {sha256}, expected {expected_sha} from {source}")


def _reject(entry: ReleaseFile, path: Path, problem: str) -> None:
    aside = path.with_name(entry.name + CORRUPT_SUFFIX)
    os.replace(path, aside)
    _info_path(path).unlink(missing_ok=True)
    raise ChecksumMismatchError(
        f"{entry.name}: {problem}; the file is corrupt and was moved to {aside} (not used). Run again to "
        "download it afresh, or check the URL list if a mirror serves another version"
    )


def _failure(entry: ReleaseFile, part: Path, problem: str) -> str:
    """The message of a file given up on, saying what is left of it."""
    have = part.stat().st_size if part.is_file() else 0
    if have:
        return f"{entry.name}: {problem}; the {have} bytes received so far are kept in {part}: run again to resume"
    _discard(part)
    return f"{entry.name}: {problem}; nothing of it was received: run again to retry"


def _info_path(part: Path) -> Path:
    return part.with_name(part.name.removesuffix(PART_SUFFIX) + PART_INFO_SUFFIX)


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _info_path(part).unlink(missing_ok=True)


def _transfer(entry: ReleaseFile, part: Path, options: _Options) -> tuple[int, bool, bool]:
    """Continue ``part`` from its current size, writing bytes as they arrive.

    Returns (bytes received, whether they continued earlier bytes, whether the full length is known and was
    reached); raises :class:`_Retry` for a failure worth another attempt, :class:`_Restart` when ``part`` cannot
    be continued, :class:`DownloadError` otherwise.
    """
    start = part.stat().st_size if part.is_file() else 0
    info_path = _info_path(part)
    info = json.loads(info_path.read_text()) if start and info_path.is_file() else {}
    headers = {}
    if start:
        headers["Range"] = f"bytes={start}-"
        validator = info.get("etag") or info.get("last_modified")
        if validator:
            headers["If-Range"] = validator  # a changed file is sent whole, never spliced onto these bytes
    try:
        response = urllib.request.urlopen(urllib.request.Request(entry.url, headers=headers), timeout=options.timeout)
    except urllib.error.HTTPError as err:
        total = _content_range(err.headers.get("Content-Range"))[1]
        if err.code == 416 and start:
            if total == start:
                return 0, True, True  # the part was complete when the last run stopped
            size = "of unknown size" if total is None else f"of {total} bytes"
            raise _Restart(f"the {start}-byte {part.name} is longer than the server's file ({size}, HTTP 416)") from err
        message = f"HTTP {err.code} {err.reason} from {entry.url}"
        if err.code in RETRIED_HTTP_CODES:
            raise _Retry(message, retry_after=_retry_after(err.headers.get("Retry-After"))) from err
        raise DownloadError(_failure(entry, part, message)) from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _Retry(f"no answer from {entry.url} ({getattr(err, 'reason', err)})") from err
    with response:
        range_start, total = _content_range(response.headers.get("Content-Range"))
        resumed = bool(start) and response.status == 206
        if resumed and range_start != start:
            raise DownloadError(
                _failure(entry, part, f"asked for bytes from {start}, the server sent from {range_start}")
            )
        if not resumed:
            start = 0  # the server ignored the Range (or If-Range found the file changed): it sends the whole file
        if total is None and response.headers.get("Content-Length") is not None:
            total = start + int(response.headers["Content-Length"])
        if resumed and info.get("total") is not None and total is not None and total != info["total"]:
            raise _Restart(f"the server's file is now {total} bytes, {part.name} was begun on one of {info['total']}")
        if entry.size is not None and total is not None and total != entry.size:
            raise DownloadError(
                _failure(entry, part, f"the server announces {total} bytes, the file list {entry.size}")
            )
        if not resumed:
            etag = response.headers.get("ETag")
            write_json_atomic(
                info_path,
                {
                    "url": entry.url,
                    "etag": None if etag is None or etag.startswith("W/") else etag,  # If-Range takes strong ones
                    "last_modified": response.headers.get("Last-Modified"),
                    "total": total,
                },
            )
        total = total if total is not None else entry.size
        received = 0
        with (
            open(part, "ab" if resumed else "wb") as out,
            tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=entry.name, disable=not options.progress
            ) as bar,
        ):
            try:
                while chunk := response.read1(_CHUNK):  # what has arrived, not a full MiB: a reset loses nothing
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise _Retry(f"connection lost after {start + received} bytes ({err!r})", received) from err
    if total is not None and start + received < total:
        raise _Retry(f"connection closed after {start + received} of {total} bytes", received)
    return received, resumed, total is not None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range`` header such as ``bytes 100-999/1000`` or ``bytes */1000``."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    first, total = match.groups()
    return (None if first is None else int(first)), (None if total == "*" else int(total))


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (seconds, or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


_GZIP_CUT = "cut"


def _digest(path: Path, gzip_stream: bool) -> tuple[str, str | None]:
    """The file's SHA-256 and, for a gzip file, what is wrong with its stream: None (whole: every member ended
    with a matching CRC-32 and length), :data:`_GZIP_CUT` (ends early) or the corruption zlib found. One pass."""
    digest = hashlib.sha256()
    check = _GzipCheck() if gzip_stream else None
    problem = None
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(_CHUNK), b""):
            digest.update(block)
            if check is not None and problem is None:
                try:
                    check.feed(block)
                except zlib.error as err:
                    problem = f"its gzip stream is corrupt ({err})"
    if check is not None and problem is None:
        try:
            problem = None if check.ended() else _GZIP_CUT
        except zlib.error as err:
            problem = f"its gzip stream is corrupt ({err})"
    return digest.hexdigest(), problem


class _GzipCheck:
    """Inflates a gzip file piece by piece, as gzip reads one: members in a row, zero padding after them.
    zlib checks each member's CRC-32 and length at its end (``zlib.error`` when they differ)."""

    def __init__(self):
        self._inflater = zlib.decompressobj(wbits=31)

    def feed(self, data: bytes) -> None:
        while data:
            if self._inflater.eof:
                data = data.lstrip(b"\0")
                if not data:
                    return
                self._inflater = zlib.decompressobj(wbits=31)  # another member
            self._inflater.decompress(data, _CHUNK)  # the output is dropped; bounded, whatever the ratio
            data = self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail

    def ended(self) -> bool:
        if not self._inflater.eof:
            self._inflater.flush()  # output zlib still holds: the end may be in it
        return self._inflater.eof


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
