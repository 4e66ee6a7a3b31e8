"""Writing request bodies without importing :mod:`json`.

The counterpart of :mod:`qumran.client.jsonread`: ``import json`` costs a `qumran define`
~4 ms (``re`` and what it imports), while the encoder ``json.dumps`` runs is C code that
needs none of it: ``_json.make_encoder``. Given ``json.dumps``'s default settings, it
writes the same text; an interpreter without ``_json`` uses :mod:`json` itself.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing stays out of the CLI's fast path
if TYPE_CHECKING:
    from typing import Any

_encode: Any = None


def _refuse(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(doc: object) -> str:
    """``json.dumps(doc)``: the same text, the same TypeError for what JSON cannot hold."""
    global _encode
    if _encode is None:
        try:
            from _json import encode_basestring_ascii, make_encoder
        except ImportError:  # another Python: the module json.dumps itself is
            import json

            return json.dumps(doc)
        # As json.JSONEncoder.iterencode makes it with the default settings: (markers,
        # default, encoder, indent, key_separator, item_separator, sort_keys, skipkeys,
        # allow_nan).
        _encode = make_encoder(
            {}, _refuse, encode_basestring_ascii, None, ": ", ", ", False, False, True
        )
    return "".join(_encode(doc, 0))
