"""Parse a script's argument dataclasses the way argparse answers a bad command line: usage, one line, exit 2.

``HfArgumentParser.parse_args_into_dataclasses`` raises ``ValueError("Some specified arguments are not used by
the HfArgumentParser: [...]")`` on an unknown or misspelt flag, which a script shows as a traceback. Kept light
(no torch) so that every script can use it.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import HfArgumentParser


def parse_dataclasses(parser: HfArgumentParser, args: Sequence[str] | None = None) -> tuple:
    """The parser's dataclasses from ``args`` (default ``sys.argv[1:]``); an unknown flag ends in
    ``parser.error`` before any dataclass is built."""
    _, unknown = parser.parse_known_args(args)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return tuple(parser.parse_args_into_dataclasses(args=args))


def parse_script_arguments(*dataclass_types: type, args: Sequence[str] | None = None) -> tuple:
    """:func:`parse_dataclasses` of a new ``HfArgumentParser`` over ``dataclass_types``."""
    return parse_dataclasses(HfArgumentParser(dataclass_types), args)
