"""Exclusive file locks around work two processes must not do at once: preparing a folder, building a cache.

Two ``train.py`` on one shared disk, a job array, or every node of a multi-node run starting together would
otherwise write the same files at the same time. The lock is ``filelock``'s (``fcntl.flock`` on POSIX): the
kernel releases it when its holder exits, even by SIGKILL, so a killed run never leaves a stale lock behind.
The second process says that it is waiting, then finds the work done and reuses it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)


@contextmanager
def exclusive(lock_path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock at ``lock_path`` for the block; ``what`` (e.g. "preparing data/x") names the work in the
    message shown while another process holds it."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning("waiting: another process is %s (it holds %s)", what, lock_path)
        lock.acquire()
        logger.warning("done waiting: the other process finished %s", what)
    try:
        yield
    finally:
        lock.release()
