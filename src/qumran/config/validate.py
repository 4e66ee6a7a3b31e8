"""Turning a plain document into a validated :class:`VmSpec`."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from qumran.config.spec import VmSpec, shown
from qumran.errors import InvalidArgument

MAX_REPORTED = 10  # errors listed in one message; a hostile document may hold thousands


def _where(loc: tuple[int | str, ...]) -> str:
    if len(loc) > 1 and loc[0] == "boot" and loc[1] in {"kernel", "disk"}:
        loc = loc[:1] + loc[2:]  # drop the boot union's tag: not a field the user wrote
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            # An unknown key is the user's text: show it quoted if it is not a plain word.
            text = item if item.isidentifier() and len(item) <= 40 else shown(item)
            parts.append(("." if parts else "") + text)
    return "".join(parts) or "(top level)"


def _reason(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; see docs/definitions.md)"
    if kind == "missing":
        return "required field is missing"
    if kind == "too_long":
        ctx = error.get("ctx", {})
        return f"at most {ctx.get('max_length')} entries, got {ctx.get('actual_length')}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def validate_spec(doc: Any) -> VmSpec:
    """Validate a definition; raise InvalidArgument listing each field path and reason."""
    if not isinstance(doc, dict):
        raise InvalidArgument("a definition is a mapping of fields (name, memory, ...)")
    try:
        return VmSpec.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        lines = [f"{_where(e['loc'])}: {_reason(e)}" for e in errors[:MAX_REPORTED]]
        if len(errors) > MAX_REPORTED:
            lines.append(f"and {len(errors) - MAX_REPORTED} more errors")
        raise InvalidArgument("invalid definition: " + "; ".join(lines)) from None
