"""Reading definition files (YAML, TOML or JSON) into plain documents.

Kept free of pydantic so the CLI can read a file cheaply; validation happens in the
daemon (``qumran.config.validate``). Relative paths and ``~`` in path fields are resolved
here, against the definition file's folder, because only the reader knows where it is.

A definition file may come from anywhere, so reading one is bounded: the file's size,
how deep it nests, and how long a number may be. YAML anchors and aliases are refused
outright (a definition never needs them, and they are how a few hundred bytes expand into
gigabytes), and so are duplicate keys (YAML would silently keep the last). A JSON file
(``qumran --json dominfo VM``'s ``definition``, say) is read with the same rules.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from qumran.errors import InvalidArgument

# Path fields, as (container key, field) pairs; resolved when they are strings.
_PATH_FIELDS = (("boot", "kernel"), ("boot", "initrd"), ("cloud_init", "user_data"))

MAX_FILE_BYTES = 1 << 20  # a definition is a few hundred bytes
MAX_DEPTH = 16  # a definition nests 3 levels (disks, a list, a disk)
MAX_NUMBER_CHARS = 32  # any number a definition takes fits in 20 digits


def read_definition(path: str | Path) -> dict[str, Any]:
    """Parse a definition file; raise InvalidArgument with the file and line on error."""
    path = Path(path)
    try:
        # Bounded, so /dev/zero or a FIFO cannot make the CLI read forever.
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise InvalidArgument(
            f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB; a definition is a short text file"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{path}: not a UTF-8 text file") from None
    suffix = path.suffix.lower()
    kind = "toml" if suffix == ".toml" else "json" if suffix == ".json" else "yaml"
    doc = parse_definition(text, kind=kind, source=str(path))
    return resolve_paths(doc, path.resolve().parent)


def parse_definition(text: str, *, kind: str = "yaml", source: str = "<input>") -> dict[str, Any]:
    """Parse ``text`` as ``kind`` ("yaml", "toml" or "json") into a plain document."""
    if kind == "toml":
        doc = _parse_toml(text, source)
    elif kind == "json":
        doc = _parse_json(text, source)
    else:
        from qumran.config.yamlsafe import load_yaml

        doc = load_yaml(text, source)
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{source}: a definition is a mapping of fields (name, memory, ...)")
    _check_depth(doc, source)
    return doc


def _parse_toml(text: str, source: str) -> Any:
    import tomllib

    try:
        return _plain_dates(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{source}: invalid TOML: {exc}") from None
    except ValueError:  # int() refusing a number of more than 4,300 digits
        raise InvalidArgument(f"{source}: invalid TOML: a number is far too long") from None
    except RecursionError:
        raise InvalidArgument(f"{source}: invalid TOML: nested too deeply") from None


def _parse_json(text: str, source: str) -> Any:
    import json

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for key, value in items:
            if key in doc:
                raise InvalidArgument(f"{source}: duplicate key {key!r} in JSON")
            doc[key] = value
        return doc

    def number(text: str) -> int:
        if len(text) > MAX_NUMBER_CHARS:
            raise InvalidArgument(f"{source}: a {len(text)}-digit number is far too long")
        return int(text)

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_int=number)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{source}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except RecursionError:
        raise InvalidArgument(f"{source}: invalid JSON: nested too deeply") from None


def _plain_dates(value: Any) -> Any:
    """TOML dates and times as their text: no definition field takes one, and the
    validator's message about a string is clearer than one about a datetime."""
    if isinstance(value, dict):
        return {k: _plain_dates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_dates(v) for v in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return value


def _check_depth(doc: dict[str, Any], source: str) -> None:
    """Refuse documents nested deeper than any definition (without recursing ourselves)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidArgument(
                f"{source}: nested more than {MAX_DEPTH} levels deep; a definition nests 3"
            )
        children = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict | list):
            stack.extend((child, depth + 1) for child in children)


def resolve_paths(doc: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the path fields of ``doc`` absolute, relative to ``base``."""

    def fix(value: Any) -> Any:
        # A NUL is left for the validator to refuse with the field's name.
        if isinstance(value, str) and value and "\0" not in value:
            return os.path.normpath(base / os.path.expanduser(value))
        return value

    doc = dict(doc)
    for container, field in _PATH_FIELDS:
        section = doc.get(container)
        if isinstance(section, dict) and field in section:
            doc[container] = {**section, field: fix(section[field])}
    disks = doc.get("disks")
    if isinstance(disks, list):
        doc["disks"] = [
            {**d, "path": fix(d["path"])} if isinstance(d, dict) and "path" in d else d
            for d in disks
        ]
    return doc
