"""Read NIH images straight out of the release's ``images_NNN.tar.gz`` archives, without extracting them.

The full release is 12 gzipped tar files of ``images/NNNNNNNN_NNN.png`` (about 45 GB); extracting them needs as
much disk again and a long wait. A ``.tar.gz`` can only be read front to back, so each archive is streamed once
and the members a caller wants are handed over as ``(file name, bytes)``; the builder decodes them from memory
(:class:`cxr_vit.data.images.MemberFile`), one process per archive.
"""

from __future__ import annotations

import glob
import hashlib
import os
import posixpath
import tarfile
import zlib
from collections.abc import Container, Iterator
from pathlib import Path
from typing import Any

from .images import is_xray_file
from .nih import NIHDataError

ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar")


def is_archive(path: str | os.PathLike) -> bool:
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES) and Path(path).is_file()


def find_archives(images_dir: str | os.PathLike) -> list[Path] | None:
    """The archives ``images_dir`` stands for: itself when it is one, those a pattern matches
    (``'nih/images_00[1-3].tar.gz'``), else the archives directly inside it.

    None when it holds no archive (a folder of images, read by :func:`cxr_vit.data.nih.index_images`). A folder
    with both archives and image files is refused: which of the two copies to read is the user's call.
    """
    path = Path(images_dir)
    if not path.exists() and any(char in str(path) for char in "*?["):  # a quoted pattern: these archives
        archives = sorted(Path(match) for match in glob.glob(str(path)))
        if not archives or not all(is_archive(archive) for archive in archives):
            raise NIHDataError(f"images_dir pattern {str(path)!r} must match one or more {ARCHIVE_SUFFIXES} files")
        return archives
    if path.is_file():
        if not is_archive(path):
            raise NIHDataError(
                f"images_dir {str(path)!r} is a file but not an image archive ({', '.join(ARCHIVE_SUFFIXES)}): "
                "pass a folder of images, a folder of the release's images_*.tar.gz, or one of those archives"
            )
        return [path]
    if not path.is_dir():
        return None
    archives = sorted(child for child in path.iterdir() if is_archive(child))
    if not archives:
        return None
    for dirpath, _dirnames, filenames in os.walk(path):
        image = next((name for name in filenames if is_xray_file(Path(dirpath) / name)), None)
        if image is not None:
            raise NIHDataError(
                f"{path} holds both image archives ({archives[0].name}, ...) and image files "
                f"({Path(dirpath, image)}); pass the folder of the extracted images or a folder with only the archives"
            )
    return archives


def iter_archive(archive: str | os.PathLike, wanted: Container[str]) -> Iterator[tuple[str, bytes]]:
    """``(file name, bytes)`` of each member whose base name is in ``wanted``, in archive order, streamed.

    Raises :class:`NIHDataError` naming the archive when it is truncated or not a tar file.
    """
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                name = posixpath.basename(member.name)
                if member.isfile() and name in wanted:
                    yield name, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise NIHDataError(
            f"cannot read archive {archive}: {type(err).__name__}: {err}. It is truncated or corrupt: download it "
            "again (scripts/download_nih.py checks sizes and checksums)"
        ) from err


def archives_fingerprint(archives: list[Path]) -> dict[str, Any]:
    """Count and digest (name and byte size of each archive), the counterpart of an image folder's fingerprint."""
    lines = [f"{archive.name}\t{archive.stat().st_size}" for archive in sorted(archives, key=lambda a: a.name)]
    return {
        "count": len(lines),
        "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        "archives": [archive.name for archive in archives],
    }


def write_archives(
    images_dir: str | os.PathLike, names: list[str], output_dir: str | os.PathLike, count: int
) -> list[Path]:
    """Pack ``names`` (files of ``images_dir``, in order) into ``count`` archives laid out as the release's:
    ``images_001.tar.gz`` ... holding ``images/<name>``. For tests and benchmarks without the 45 GB release."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    per_archive = -(-len(names) // count)
    archives = []
    for index in range(count):
        archive = output_dir / f"images_{index + 1:03d}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for name in names[index * per_archive : (index + 1) * per_archive]:
                tar.add(Path(images_dir) / name, arcname=f"images/{name}")
        archives.append(archive)
    return archives
