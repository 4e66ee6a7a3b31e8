"""Parsing of human sizes such as ``256M``, ``1.5G`` or ``1GiB``."""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# ASCII digits only: int() would also take other scripts' digits ('٣').
# A decimal fraction is read exactly (1.5G is 1536M), never through a float.
_SIZE = re.compile(r"\s*([0-9]+)(?:\.([0-9]+))?\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE | re.ASCII)
# 20 digits hold any 64-bit size; longer strings are refused before int() parses them
# (a 4,300-digit number would otherwise cost time and end in int()'s own error).
MAX_DIGITS = 20


def parse_size(value: int | str, default_unit: str = "M", whole_unit: str = "") -> int:
    """Return a size in bytes. A bare integer is read in ``default_unit``; the size must
    be a whole number of ``whole_unit`` (bytes by default)."""
    numerator, denominator = _exact(value, default_unit)
    step = _UNITS[whole_unit]
    count, rest = divmod(numerator, denominator * step)
    if rest:
        name = f"{whole_unit}iB" if whole_unit else "bytes"
        raise ValueError(
            f"{str(value).strip()!r} is not a whole number of {name}; "
            f"use {count}{whole_unit} or {count + 1}{whole_unit}"
        )
    return count * step


def size_floor(value: int | str, default_unit: str = "M") -> int:
    """The size in bytes, rounded down: to compare with a bound before asking for more."""
    numerator, denominator = _exact(value, default_unit)
    return numerator // denominator


def _exact(value: int | str, default_unit: str) -> tuple[int, int]:
    """The size in bytes as a fraction (numerator, a power of 10)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 256M or 1G, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative; use a size such as 256M or 1G")
        return value * _UNITS[default_unit], 1
    match = _SIZE.fullmatch(value)
    if match is None:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ValueError(f"{shown!r} is not a size: use a number with a unit, e.g. 256M or 1G")
    whole, fraction, unit = match.groups()
    fraction = (fraction or "").rstrip("0")
    if len(whole.lstrip("0")) > MAX_DIGITS or len(fraction) > MAX_DIGITS:
        digits = len(whole) + len(fraction)
        raise ValueError(f"a {digits}-digit size is far too large; use e.g. 256M or 1.5G")
    return int(whole + fraction) * _UNITS[unit.upper() or default_unit], 10 ** len(fraction)


def format_size(nbytes: int) -> str:
    """Shortest exact rendering: 268435456 -> '256M'."""
    for unit in ("T", "G", "M", "K"):
        if nbytes and nbytes % _UNITS[unit] == 0:
            return f"{nbytes // _UNITS[unit]}{unit}"
    return str(nbytes)
