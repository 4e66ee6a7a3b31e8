"""Reading definition files (YAML or TOML) into plain documents.

Kept free of pydantic so the CLI can read a file cheaply; validation happens in the
daemon (``qumran.config.validate``). Relative paths and ``~`` in path fields are resolved
here, against the definition file's folder, because only the reader knows where it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qumran.errors import InvalidArgument

# Path fields, as (container key, field) pairs; resolved when they are strings.
_PATH_FIELDS = (("boot", "kernel"), ("boot", "initrd"))


def read_definition(path: str | Path) -> dict[str, Any]:
    """Parse a definition file; raise InvalidArgument with the file and line on error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"{path}: not a UTF-8 text file") from None
    doc = parse_definition(text, toml=path.suffix.lower() == ".toml", source=str(path))
    return resolve_paths(doc, path.resolve().parent)


def parse_definition(text: str, *, toml: bool = False, source: str = "<input>") -> dict[str, Any]:
    if toml:
        import tomllib

        try:
            doc: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"{source}: invalid TOML: {exc}") from None
    else:
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise InvalidArgument(f"{source}: invalid YAML{line}: {problem}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{source}: a definition is a mapping of fields (name, memory, ...)")
    return doc


def resolve_paths(doc: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the path fields of ``doc`` absolute, relative to ``base``."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value:
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
