"""Parsing of human sizes such as ``256M`` or ``1GiB``."""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# ASCII digits only: int() would also take other scripts' digits ('٣').
_SIZE = re.compile(r"\s*([0-9]+)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE | re.ASCII)
# 20 digits hold any 64-bit size; longer strings are refused before int() parses them
# (a 4,300-digit number would otherwise cost time and end in int()'s own error).
MAX_DIGITS = 20


def parse_size(value: int | str, default_unit: str = "M") -> int:
    """Return a size in bytes. A bare integer is read in ``default_unit``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 256M or 1G, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative; use a size such as 256M or 1G")
        return value * _UNITS[default_unit]
    match = _SIZE.fullmatch(value)
    if match is None:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ValueError(f"{shown!r} is not a size: use a number with a unit, e.g. 256M or 1G")
    number, unit = match.groups()
    if len(number.lstrip("0")) > MAX_DIGITS:
        raise ValueError(f"a {len(number)}-digit size is far too large; use e.g. 256M or 1G")
    return int(number) * _UNITS[unit.upper() or default_unit]


def format_size(nbytes: int) -> str:
    """Shortest exact rendering: 268435456 -> '256M'."""
    for unit in ("T", "G", "M", "K"):
        if nbytes and nbytes % _UNITS[unit] == 0:
            return f"{nbytes // _UNITS[unit]}{unit}"
    return str(nbytes)
