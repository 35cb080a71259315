"""Markdown for the reports and cards: one table renderer and the number formats every section shares."""

from __future__ import annotations

from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], aligned: bool = False) -> str:
    """A Markdown table; ``aligned`` pads the columns so the raw text also reads in a terminal."""
    lines = [list(headers), *(list(row) for row in rows)]
    if aligned:
        widths = [max(len(str(cell)) for cell in column) for column in zip(*lines, strict=True)]
    else:
        widths = [3] * len(headers)
    rule = ["-" * width for width in widths]
    if aligned:
        lines = [[str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)] for line in lines]
    lines.insert(1, rule)
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def number(value: float | None, digits: int = 3) -> str:
    """``0.612``, or ``n/a`` for an undefined value."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_ci(entry: dict) -> str:
    """``0.612 [0.540, 0.690]`` from an interval entry (``value``, ``ci_low``, ``ci_high``); where there is no value,
    the entry's ``note`` (why not) or ``n/a``."""
    if entry.get("value") is None:
        return entry.get("note") or "n/a"
    if entry.get("ci_low") is None:
        return f"{entry['value']:.3f} [n/a]"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
