"""Reading qumrand's JSON answers without importing :mod:`json`.

``import json`` imports ``re`` (and with it ``enum``, ``functools``, ``collections``):
about 4 ms of a `qumran` run that is otherwise ~10 ms. The parsing itself is done by C
code that needs none of that: ``_json.make_scanner``, the scanner ``json.loads`` uses.
Given the same settings as ``json.loads``'s defaults, it returns the same values; the
error paths (and an interpreter without ``_json``) use :mod:`json` itself.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing stays out of the CLI's fast path
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"  # JSON's whitespace (RFC 8259 section 2), as json.loads skips it
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Settings:
    """What the C scanner reads from ``json.JSONDecoder()``: its default settings."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__
    memo: dict[str, str] = {}


_scan: Any = None


def loads(data: bytes | str) -> Any:
    """``json.loads(data)``; a malformed document raises ValueError, as json's does."""
    global _scan
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if _scan is None:
        try:
            from _json import make_scanner
        except ImportError:  # another Python: the module json.loads itself is
            import json

            return json.loads(text)
        _scan = make_scanner(_Settings())  # type: ignore[arg-type]  # duck-typed, as in json
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        value, end = None, -1
    if end < 0 or text[end:].strip(_WHITESPACE):
        import json

        return json.loads(text)  # raises the error json.loads gives, with its position
    return value
