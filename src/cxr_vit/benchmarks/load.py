"""How busy the machine was with other work while something was timed: a loaded run is not the figure.

Around a timed interval, ``/proc/stat``'s CPU time (user, nice, system, irq, softirq) is read and this process's own
CPU time (every thread: the torch and ONNX Runtime pools) is taken from it; what remains, over the wall time, is how
many CPUs other work kept busy. A KVM guest's ``steal`` (time the host gave its CPUs to other guests) is kept
apart, as CPUs stolen. An interval is *loaded* when either reaches ``LOADED_CPUS`` (0.1 CPU: 5% of a 2-core
machine), a rule that does not depend on the 1-minute load average, which lags and counts this process too (it
is recorded before and after the run, for reference).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
LOADED_CPUS = 0.1
BUSY_FIELDS = (0, 1, 2, 5, 6)  # user nice system irq softirq (guest time is inside user already)
STEAL_FIELD = 7


def cpu_seconds() -> tuple[float, float] | None:
    """(busy, stolen) CPU seconds of the whole machine since boot; None without ``/proc/stat``."""
    if not PROC_STAT.is_file():
        return None
    fields = [int(value) for value in PROC_STAT.read_text().split("\n", 1)[0].split()[1:]]  # the "cpu" line
    tick = os.sysconf("SC_CLK_TCK")
    stolen = fields[STEAL_FIELD] if len(fields) > STEAL_FIELD else 0
    return sum(fields[index] for index in BUSY_FIELDS) / tick, stolen / tick


@dataclass
class Interval:
    """A timed interval's wall time, the CPUs other work kept busy and the host stole, and this process's CPUs."""

    wall_s: float
    other_cpus: float | None
    stolen_cpus: float | None
    own_cpus: float

    @property
    def loaded(self) -> bool | None:
        if self.other_cpus is None:
            return None
        return self.other_cpus >= LOADED_CPUS or self.stolen_cpus >= LOADED_CPUS


class LoadMeter:
    """``with LoadMeter() as meter: ...`` then ``meter.interval``: the other work done while the block ran."""

    def __enter__(self) -> LoadMeter:
        self.seconds, self.own, self.start = cpu_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.start
        own = time.process_time() - self.own
        seconds = cpu_seconds()
        if self.seconds is None or seconds is None:
            self.interval = Interval(wall, None, None, own / wall)
            return
        other = max(0.0, seconds[0] - self.seconds[0] - own) / wall
        self.interval = Interval(wall, other, (seconds[1] - self.seconds[1]) / wall, own / wall)


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None
