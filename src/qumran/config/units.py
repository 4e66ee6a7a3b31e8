"""Parsing of human sizes such as ``256M`` or ``1GiB``."""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(value: int | str, default_unit: str = "M") -> int:
    """Return a size in bytes. A bare integer is read in ``default_unit``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 256M or 1G, not a boolean")
    if isinstance(value, int):
        return value * _UNITS[default_unit]
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size: use a number with a unit, e.g. 256M or 1G")
    number, unit = match.groups()
    return int(number) * _UNITS[unit.upper() or default_unit]


def format_size(nbytes: int) -> str:
    """Shortest exact rendering: 268435456 -> '256M'."""
    for unit in ("T", "G", "M", "K"):
        if nbytes and nbytes % _UNITS[unit] == 0:
            return f"{nbytes // _UNITS[unit]}{unit}"
    return str(nbytes)
