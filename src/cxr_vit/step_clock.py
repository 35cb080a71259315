"""How long a step of a long job took, across the attempts it needed, including attempts killed without warning.

A killed process cannot note when it ended, so a running attempt notes that it is alive every few seconds; the
next attempt reads when the killed one started and when it was last seen. Kept apart from the job it times (and
light to import) so that any step runner can use it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from .atomic import write_json_atomic

HEARTBEAT_S = 2.0  # how often a running attempt notes that it is alive: the resolution of a killed attempt's time


class StepClock:
    """``with StepClock(path, key):`` one attempt at a step, timed: ``path`` lists every attempt of this key with
    when it started and when it was last seen running (noted every :data:`HEARTBEAT_S` s by a thread), so an
    attempt killed without warning still counts, to its last sign of life. Another key starts the list afresh.

    ``earlier``: the seconds of the attempts before this one; ``attempts_s``: all of them, once this one ended.
    """

    def __init__(self, path: str | os.PathLike, key: str, heartbeat_s: float = HEARTBEAT_S):
        self.path = Path(path)
        self.key = key
        self.heartbeat_s = heartbeat_s
        recorded = json.loads(self.path.read_text()) if self.path.is_file() else None
        self._attempts = recorded["attempts"] if recorded and recorded.get("key") == key else []
        self.earlier = [attempt["seen"] - attempt["started"] for attempt in self._attempts]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    @property
    def attempts_s(self) -> list[float]:
        return [attempt["seen"] - attempt["started"] for attempt in self._attempts]

    def __enter__(self) -> StepClock:
        now = time.time()
        self._attempts.append({"started": now, "seen": now})
        self._note()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._note()  # failed or finished: its time counts either way

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._note()

    def _note(self) -> None:
        with self._lock:
            self._attempts[-1]["seen"] = time.time()
            write_json_atomic(self.path, {"key": self.key, "attempts": self._attempts})
