"""The DICOM node's on-disk queue: a film is on disk before it is acknowledged, and nothing is lost to a kill.

One folder per state, one entry per film, named by the film's SOP Instance UID; a move between states is a
``rename`` (atomic on one file system) and every write is fsynced with its folder before it counts:

- ``incoming/<uid>.dcm``: received and acknowledged, not yet predicted;
- ``outbox/<uid>/``: the result objects (SR, overlay) written for that film, not yet delivered;
- ``sent/<uid>/``: delivered to the destination (kept as the node's record of what it sent);
- ``failed/<uid>.dcm`` + ``.txt``: a film the model could not read, with the reason.

A film is taken out of ``incoming`` only after its results are in ``outbox``, and results leave ``outbox`` only
after the destination confirmed them, so a kill at any point repeats work (same result UIDs, since they are
derived from the film's UID and the model) but never skips it. A film received again replaces its earlier entry.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

STATES = ("incoming", "outbox", "sent", "failed")


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (the entry's own data is fsynced by its writer)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_durably(path: Path, data: bytes) -> None:
    """``data`` into ``path`` via a temporary name, fsynced before and after the rename."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_folder(path.parent)


def is_uid(text: str) -> bool:
    """Whether ``text`` looks like a DICOM UID: digits and dots, at most 64 characters (so a safe file name)."""
    return bool(text) and len(text) <= 64 and all(c in "0123456789." for c in text) and text.strip(".") == text


def safe_name(uid: str) -> str:
    """A SOP Instance UID as a file name; anything that is not a UID is refused."""
    if not is_uid(uid):
        raise ValueError("not a DICOM UID")
    return uid


class Spool:
    """The queue folders under ``root`` (created on first use); see the module docstring for the states."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        for state in STATES:
            (self.root / state).mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob("*/.*.tmp-*"):  # half-written by a killed process: never acknowledged
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()

    def folder(self, state: str) -> Path:
        return self.root / state

    def receive(self, uid: str, encoded: bytes) -> Path:
        """Store a received film durably; only after this returns may the sender be told it succeeded."""
        path = self.folder("incoming") / f"{safe_name(uid)}.dcm"
        write_durably(path, encoded)
        return path

    def incoming(self) -> list[Path]:
        """Films waiting for a prediction, oldest first (the order they were acknowledged in)."""
        files = [path for path in self.folder("incoming").glob("*.dcm") if not path.name.startswith(".")]
        return sorted(files, key=lambda path: (path.stat().st_mtime_ns, path.name))

    def add_results(self, uid: str, write: Callable[[Path], None]) -> Path:
        """``write(folder)`` fills a fresh folder, which then becomes ``outbox/<uid>`` and the film leaves
        ``incoming``. An earlier result of the same film (sent or not) is replaced: it had the same UIDs."""
        name = safe_name(uid)
        staging = self.folder("outbox") / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            write(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        for path in staging.iterdir():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        fsync_folder(staging)
        target = self.folder("outbox") / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(self.folder("sent") / name, ignore_errors=True)
        os.replace(staging, target)
        fsync_folder(target.parent)
        self._remove_incoming(name)
        return target

    def fail(self, uid: str, reason: str) -> None:
        """A film that cannot be predicted: kept in ``failed/`` with its reason, out of the way of the others."""
        name = safe_name(uid)
        write_durably(self.folder("failed") / f"{name}.txt", (reason + "\n").encode())
        os.replace(self.folder("incoming") / f"{name}.dcm", self.folder("failed") / f"{name}.dcm")
        fsync_folder(self.folder("incoming"))
        fsync_folder(self.folder("failed"))

    def outbox(self) -> list[Path]:
        """Result folders waiting to be delivered, oldest first."""
        folders = [path for path in self.folder("outbox").iterdir() if path.is_dir() and not path.name.startswith(".")]
        return sorted(folders, key=lambda path: (path.stat().st_mtime_ns, path.name))

    def mark_sent(self, folder: Path) -> None:
        """A result folder the destination confirmed moves to ``sent/``."""
        target = self.folder("sent") / folder.name
        shutil.rmtree(target, ignore_errors=True)
        os.replace(folder, target)
        fsync_folder(folder.parent)
        fsync_folder(target.parent)

    def counts(self) -> dict[str, int]:
        """Entries per state (films for ``incoming``/``failed``, result folders for ``outbox``/``sent``)."""
        return {
            "incoming": len(self.incoming()),
            "outbox": len(self.outbox()),
            "sent": sum(1 for path in self.folder("sent").iterdir() if path.is_dir()),
            "failed": len(list(self.folder("failed").glob("*.dcm"))),
        }

    def _remove_incoming(self, name: str) -> None:
        path = self.folder("incoming") / f"{name}.dcm"
        if path.exists():
            path.unlink()
            fsync_folder(path.parent)
