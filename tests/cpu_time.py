"""A pytest plugin that reports each test's CPU time (user + sys, this process and the subprocesses it waited for).

On a shared, loaded machine wall-clock durations say more about the neighbours than about the test; CPU time is what
a test costs on an idle CI runner. Use: ``PYTHONPATH=tests pytest -p cpu_time`` and read the table printed at the
end; ``--cpu-time-top N`` sets its length (default 30), ``--cpu-time-log F`` appends each test's line to F as it ends
(for long runs). Subprocesses count once they are waited for (subprocess.run does), killed ones included.
"""

from __future__ import annotations

import resource
import time

import pytest

_RESULTS: list[tuple[float, float, str]] = []


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-time-top", type=int, default=30, help="how many of the costliest tests to list")
    parser.addoption("--cpu-time-log", help="also append each test's line to this file as it ends")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Setup, call and teardown together: a module or session fixture's cost lands on the test that first needs it."""
    cpu, wall = _cpu_s(), time.monotonic()
    yield
    _RESULTS.append((_cpu_s() - cpu, time.monotonic() - wall, item.nodeid))
    if log := item.config.getoption("--cpu-time-log"):
        with open(log, "a") as file:
            file.write(_line(*_RESULTS[-1]) + "\n")


def _line(cpu: float, wall: float, nodeid: str) -> str:
    return f"{cpu:8.1f} s cpu {wall:8.1f} s wall  {nodeid}"


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if not _RESULTS:
        return
    total_cpu, total_wall = sum(r[0] for r in _RESULTS), sum(r[1] for r in _RESULTS)
    terminalreporter.section(f"CPU time per test (user+sys incl. waited-for subprocesses); {total_cpu:.0f} s CPU, "
                             f"{total_wall:.0f} s wall in all")  # fmt: skip
    for cpu, wall, nodeid in sorted(_RESULTS, reverse=True)[: config.getoption("--cpu-time-top")]:
        terminalreporter.write_line(_line(cpu, wall, nodeid))
