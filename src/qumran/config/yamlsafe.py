"""A YAML loader for untrusted definition files.

PyYAML's ``safe_load`` builds no arbitrary objects, but it still expands aliases (a
"billion laughs" file of a few hundred bytes becomes gigabytes), recurses once per
nesting level (deep nesting ends in RecursionError), silently keeps the last of two
equal keys, and makes dates, sets and bytes that JSON cannot carry to the daemon. This
loader refuses each of these, naming the line, and builds only what JSON has: mappings
with string keys, lists, strings, numbers, booleans and null.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode

from qumran.config.files import MAX_DEPTH, MAX_NUMBER_CHARS
from qumran.errors import InvalidArgument

_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_JSON_TAGS = {
    f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str", "seq", "map")
}


class _Loader(yaml.SafeLoader):
    """SafeLoader without aliases, anchors, deep nesting, duplicate keys or non-JSON types."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ComposerError(
                None, None, "anchors and aliases (& and *) are not allowed in a definition",
                event.start_mark,
            )  # fmt: skip
        if self._depth >= MAX_DEPTH:
            raise ComposerError(
                None, None, f"nested more than {MAX_DEPTH} levels deep; a definition nests 3",
                event.start_mark,
            )  # fmt: skip
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        return node

    def flatten_mapping(self, node: MappingNode) -> None:
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConstructorError(
                    None, None, "merge keys (<<) are not used in a definition",
                    key_node.start_mark,
                )  # fmt: skip

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise ConstructorError(
                    None, None, f"key {key!r} is not a field name (quote it if it is one)",
                    key_node.start_mark,
                )  # fmt: skip
            if key in first_line:
                raise ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first_line[key]})",
                    key_node.start_mark,
                )  # fmt: skip
            first_line[key] = line
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        if node.tag == _TIMESTAMP:  # `2024-01-01` unquoted: kept as the text it is
            return self.construct_scalar(node)  # type: ignore[arg-type]
        if node.tag not in _JSON_TAGS:
            raise ConstructorError(
                None, None, f"the tag {node.tag} is not used in a definition", node.start_mark
            )
        if (
            node.tag.endswith(":int")
            and isinstance(node, ScalarNode)
            and len(node.value) > MAX_NUMBER_CHARS
        ):
            raise ConstructorError(
                None, None, f"a {len(node.value)}-character number is far too long",
                node.start_mark,
            )  # fmt: skip
        return super().construct_object(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document; raise InvalidArgument with the file and line on error."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # the reader refuses control characters already here
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        where = exc.problem_mark
        line = f" at line {where.line + 1}" if where is not None else ""
        raise InvalidArgument(f"{source}: invalid YAML{line}: {exc.problem or exc}") from None
    except yaml.reader.ReaderError as exc:
        number = text.count("\n", 0, exc.position) + 1
        char = f"U+{exc.character:04X}"
        raise InvalidArgument(
            f"{source}: invalid YAML at line {number}: character {char} is not allowed"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
