"""Files that mark something complete (a prepared folder's record, a step's marker, a config) are replaced whole.

Written to a temporary name beside the target, then renamed over it: a reader, or a run killed half-way, sees the
old file or the whole new one, never half of one. The temporary name carries the process id, so two writers never
share one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(temporary)`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    write(temporary)
    os.replace(temporary, path)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda temporary: temporary.write_text(text))


def write_json_atomic(path: str | os.PathLike, content: Any, **dumps_options) -> Path:
    """``json.dumps(content, indent=2, **dumps_options)`` plus a newline, replaced whole."""
    return write_text_atomic(path, json.dumps(content, indent=2, **dumps_options) + "\n")
