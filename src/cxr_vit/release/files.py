"""The files of the NIH ChestX-ray14 release and where they are fetched from.

The 12 image archives' URLs are those of NIH's own download script (``batch_download_zips.py`` in the release's
Box folder, https://nihcc.app.box.com/v/ChestXray-NIHCC), as copied verbatim in many public repositories; they
could not be fetched from where this was written, and their sizes and SHA-256 digests are not published, so none
is recorded here. A download then checks the size the server announces, and the digest computed on arrival goes
into a manifest beside the files (:mod:`.download`), which later runs check. The label CSV, box list and split
lists have no stable direct URL in that folder (Box serves them through its web page): they have no URL here,
and a download of them asks for ``--urls FILE`` or a mirror (:data:`MIRROR_ENV`).

A URL list file (``--urls``) has one file per line: ``name url [size_bytes [sha256]]``; ``#`` starts a comment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

MIRROR_ENV = "CXR_VIT_NIH_MIRROR"  # base URL of a mirror that serves the release's files under their names
URLS_ENV = "CXR_VIT_NIH_URLS"  # a URL list file, as --urls
RELEASE_HOME = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
RELEASE_GB = 45  # the 12 archives, about 45 GB in all (sizes per archive are not published)
NUM_RELEASE_IMAGES = 112_120
NUM_TRAIN_VAL_IMAGES = 86_524  # lines of train_val_list.txt (the rest, 25,596, are test_list.txt)


@dataclass(frozen=True)
class ReleaseFile:
    """One file of the release: its name, URL (None: none known), and size / SHA-256 where known."""

    name: str
    url: str | None = None
    size: int | None = None
    sha256: str | None = None

    @property
    def is_archive(self) -> bool:
        return self.name.endswith(".tar.gz")


_BOX = "https://nihcc.box.com/shared/static/"
_ARCHIVE_KEYS = (
    "vfk49d74nhbxq3nqjg0900w5nvkorp5c",
    "i28rlmbvmfjbl8p2n3ril0pptcmcu9d1",
    "f1t00wrtdk94satdfb9olcolqx20z2jp",
    "0aowwzs5lhjrceb3qp67ahp0rd1l1etg",
    "v5e3goj22zr6h8tzualxfsqlqaygfbsn",
    "asi7ikud9jwnkrnkj99jnpfkjdes7l6l",
    "jn1b4mw4n6lnh74ovmcjb8y48h8xj07n",
    "tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j",
    "upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj",
    "l6nilvfa9cg3s28tqv1qc1olm3gnz54p",
    "hhq8fkdgvcari67vfhs7ppg2w6ni4jze",
    "ioqwiy20ihqwyr8pf4c24eazhh281pbu",
)
LABELS_CSV = "Data_Entry_2017_v2020.csv"
BBOX_CSV = "BBox_List_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"

RELEASE_FILES: tuple[ReleaseFile, ...] = (
    *(ReleaseFile(f"images_{index:03d}.tar.gz", f"{_BOX}{key}.gz") for index, key in enumerate(_ARCHIVE_KEYS, 1)),
    ReleaseFile(LABELS_CSV),
    ReleaseFile(BBOX_CSV),
    ReleaseFile(TRAIN_VAL_LIST),
    ReleaseFile(TEST_LIST),
)


class UrlListError(ValueError):
    """A bad URL list file; the message names the file and line."""


def read_url_list(path: str | os.PathLike) -> dict[str, ReleaseFile]:
    """Parse a URL list file (see the module docstring) into ``{name: ReleaseFile}``."""
    path = Path(path)
    if not path.is_file():
        raise UrlListError(f"URL list {str(path)!r} does not exist")
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) < 2 or len(fields) > 4:
            raise UrlListError(f"{path} line {number}: expected 'name url [size_bytes [sha256]]', got {line!r}")
        name, url, *rest = fields
        try:
            size = int(rest[0]) if rest else None
        except ValueError:
            raise UrlListError(f"{path} line {number}: size {rest[0]!r} is not a number of bytes") from None
        sha256 = rest[1].lower() if len(rest) > 1 else None
        if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
            raise UrlListError(f"{path} line {number}: {rest[1]!r} is not a SHA-256 hex digest")
        entries[name] = ReleaseFile(name, url, size, sha256)
    return entries


def release_files(urls: str | os.PathLike | None = None, names: list[str] | None = None) -> list[ReleaseFile]:
    """The files to fetch, with their sources; only ``names`` when given.

    A URL list (``urls``, else :data:`URLS_ENV`) replaces the package's list: its files are the ones fetched (a
    mirror's, or a test's), with the package's size and digest wherever the list gives none. Else a mirror
    (:data:`MIRROR_ENV`) serves the package's files under their names; else the package's own URLs.
    """
    known = {entry.name: entry for entry in RELEASE_FILES}
    urls = urls or os.environ.get(URLS_ENV)
    mirror = os.environ.get(MIRROR_ENV)
    if urls:
        files = {
            name: replace(
                entry,
                size=entry.size or getattr(known.get(name), "size", None),
                sha256=entry.sha256 or getattr(known.get(name), "sha256", None),
            )
            for name, entry in read_url_list(urls).items()
        }
    elif mirror:
        files = {name: replace(entry, url=f"{mirror.rstrip('/')}/{name}") for name, entry in known.items()}
    else:
        files = known
    if names:
        unknown = [name for name in names if name not in files]
        if unknown:
            raise UrlListError(f"unknown file name(s) {unknown}; the list has: {', '.join(files)}")
        return [files[name] for name in names]
    return list(files.values())
