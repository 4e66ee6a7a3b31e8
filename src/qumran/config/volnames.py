"""Names of storage volumes and pools, checked the same way in definitions and in qumrand.

A volume is a file in its pool's directory and its name is the file's name, so a name
must stay one component of that directory: no ``/``, no ``..``, no NUL, and no leading
``.`` (hidden names are the daemon's own: work in progress, ``.NAME.part-*``). Control
characters are refused too: a name is printed in tables and error lines.
"""

from __future__ import annotations

import re

POOL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}", re.ASCII)
NAME_MAX = 255  # bytes in one file name (linux/limits.h)


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def volume_name(value: str) -> str:
    """``value`` if it can name a volume, else ValueError saying why."""
    if not value:
        raise ValueError("a volume name cannot be empty")
    if "\0" in value:
        raise ValueError("a volume name cannot contain a NUL character")
    if "/" in value:
        raise ValueError(f"{_shown(value)} has a '/': a volume name is a file name, not a path")
    if ".." in value:
        raise ValueError(f"{_shown(value)} has '..' in it; choose another volume name")
    if value.startswith("."):
        raise ValueError(
            f"{_shown(value)} starts with '.': hidden names are qumrand's own; drop the dot"
        )
    if not value.isprintable():
        raise ValueError(f"{_shown(value)} has a control character; choose a plain name")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{_shown(value)} is not valid UTF-8 text") from None
    if size > NAME_MAX:
        raise ValueError(f"a volume name is at most {NAME_MAX} bytes, not {size}")
    return value


def pool_name(value: str) -> str:
    """``value`` if it can name a pool, else ValueError saying why."""
    if not POOL_PATTERN.fullmatch(value):
        raise ValueError(
            f"{_shown(value)} is not a pool name: use 1-63 letters, digits, '.', '_', '+' "
            "or '-', starting with a letter or digit"
        )
    return value
