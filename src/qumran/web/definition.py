"""A definition as the Edit page shows it: YAML text, and the daemon's errors tied to lines.

The text a person saves is read by :func:`qumran.config.files.parse_definition` (the safe
loader ``qumran define`` uses: no aliases, no duplicate keys, bounded) and validated by
the daemon; this module only renders and explains. An error message of the daemon lists
field paths (``boot.kernel: path must be absolute; memory: ...``): each is found in the
text so the page can say on which line it is, as an editor would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from qumran.config.files import MAX_FILE_BYTES, parse_definition
from qumran.errors import InvalidArgument

SOURCE = "definition"  # how parse errors name the text ("definition: invalid YAML at line 3")
_PREFIX = "invalid definition: "
# "; " followed by a field path and ": " starts the next item (a reason may itself hold "; ").
_ITEM = re.compile(r"; (?=(?:[A-Za-z_][\w]*|'[^']*')(?:\.[\w']+|\[\d+\])*: )")
_PATH = re.compile(r"^((?:[A-Za-z_]\w*)(?:\.[A-Za-z_]\w*|\[\d+\])*): ")
_AT_LINE = re.compile(r"\bat line (\d+)\b")


@dataclass(frozen=True)
class Problem:
    """One thing wrong, for the page: the message and the line it is about (1-based)."""

    message: str
    line: int | None


def to_yaml(definition: dict[str, Any]) -> str:
    """The stored definition as the YAML a person would write: fields in the spec's
    order, fields left at "nothing" (null, empty text, no disks) out: they mean the same."""
    return yaml.safe_dump(
        _without_empty(definition), sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def _without_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_empty(v) for k, v in value.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def parse(text: str) -> dict[str, Any]:
    """The edited text as a document; InvalidArgument (with the line) if it is not one."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise InvalidArgument(f"{SOURCE}: larger than 1 MiB; a definition is a short text")
    return parse_definition(text, kind="yaml", source=SOURCE)


def problems(message: str, text: str) -> list[Problem]:
    """The daemon's message as one problem per field, each with its line in ``text``."""
    found = _AT_LINE.search(message)
    if found and message.startswith(f"{SOURCE}: "):  # a parse error names its line itself
        return [Problem(message.removeprefix(f"{SOURCE}: "), int(found.group(1)))]
    items = _ITEM.split(message.removeprefix(_PREFIX)) if message.startswith(_PREFIX) else []
    if not items:
        path = _PATH.match(message)
        return [Problem(message, line_of(text, path.group(1)) if path else None)]
    return [Problem(item, _line_of_item(item, text)) for item in items]


def _line_of_item(item: str, text: str) -> int | None:
    path = _PATH.match(item)
    return line_of(text, path.group(1)) if path else None


def line_of(text: str, path: str) -> int | None:
    """The 1-based line of field ``path`` (``boot.kernel``, ``disks[1].path``) in ``text``;
    the nearest enclosing field's line if the field itself is missing; None if unknown."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # nodes only: nothing constructed
    except (yaml.YAMLError, RecursionError):
        return None
    if root is None:
        return None
    node: Node = root
    line: int | None = None
    for token in re.findall(r"\[(\d+)\]|([^.\[\]]+)", path):
        index, key = token
        child: Node | None = None
        if key and isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == key:
                    line, child = key_node.start_mark.line + 1, value_node
                    break
        elif index and isinstance(node, SequenceNode) and int(index) < len(node.value):
            child = node.value[int(index)]
            line = child.start_mark.line + 1
        if child is None:
            return line
        node = child
    return line
