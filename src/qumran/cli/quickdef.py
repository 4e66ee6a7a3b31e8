"""Definition files read without PyYAML, for the common case.

``qumran define FILE`` spent most of its time importing the YAML reader (PyYAML,
pathlib, typing, datetime, ``re``: ~20 ms, twice virsh's whole `define`). Yet a
definition file is nearly always the same few shapes: nested ``key: value`` mappings, a
list of disks, plain or quoted one-line values. Such a file is read here, with string
methods alone, into exactly what :func:`qumran.config.files.read_definition` returns.
Anything else -- flow collections (``[a, b]``), block scalars (``|``), anchors, tags,
escapes, tabs, a value YAML 1.1 would read as something other than text, an integer,
a boolean or null (``0o17``, ``1_000``, ``1.5``, ``12:30``), a duplicate key, a file too
large or not UTF-8 -- gives None, and the full reader reads the file, with its own
messages. A unit test holds the two to the same answers (tests/unit/test_cli_quickdef.py).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing stays out of the CLI's fast path
if TYPE_CHECKING:
    from typing import Any

MAX_FILE_BYTES = 1 << 20  # as qumran.config.files
MAX_NUMBER_CHARS = 32  # as qumran.config.files: a longer number is its to refuse
MAX_NESTING = 8  # a definition nests 3; deeper is left to the full reader (and its limit)

# YAML 1.1's words for booleans and null (PyYAML's resolver): a plain scalar spelled so
# is not text. Nothing else a plain scalar starting with a letter can be.
_WORDS: dict[str, bool | None] = {
    **dict.fromkeys(("yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    **dict.fromkeys(("no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
    **dict.fromkeys(("null", "Null", "NULL", "~"), None),
}
_DIGITS = "0123456789"
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_KEY = frozenset(_LETTERS + _DIGITS + "_-")
# What a plain scalar may hold here: enough for names, sizes, paths and kernel command
# lines; a character outside it (#, quotes, brackets, &, *, !, |, >, ...) goes to PyYAML.
_PLAIN = frozenset(_LETTERS + _DIGITS + " _-./=+,@:%~")
# Where the file's own paths are (as qumran.config.files._PATH_FIELDS).
_PATH_FIELDS = (("boot", "kernel"), ("boot", "initrd"), ("cloud_init", "user_data"))


class _NotSimple(Exception):
    """The file uses more YAML than this reader knows."""


def read_definition(path: str) -> dict[str, Any] | None:
    """What ``qumran.config.files.read_definition(path)`` returns, or None when only it
    can tell (a file it would refuse included: its message is the one to show)."""
    lower = path.lower()
    if lower.endswith((".toml", ".json")):
        return None
    data = _read_regular(path)
    if data is None:
        return None
    if len(data) > MAX_FILE_BYTES or not data.isascii():
        return None  # (ASCII is UTF-8; anything else is left to the full reader)
    try:
        doc = parse(data.decode("ascii"))
    except _NotSimple:
        return None
    return _resolve_paths(doc, os.path.dirname(os.path.realpath(path)))


def _read_regular(path: str) -> bytes | None:
    """The start of a regular file; None for anything else, left unread: a pipe
    (``define /dev/stdin``) or FIFO is the full reader's, and its data must still be
    there for it. O_NONBLOCK: opening a FIFO does not wait for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_mode & 0o170000 != 0o100000:  # not S_ISREG
            return None
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def parse(text: str) -> dict[str, Any]:
    """The document in ``text``; raises _NotSimple where PyYAML must read it."""
    lines = _lines(text)
    if not lines or lines[0][0] != 0 or lines[0][1] == "-":
        raise _NotSimple
    doc, end = _mapping(lines, 0, 0, 1)
    if end != len(lines):
        raise _NotSimple  # a line less indented than the first, or a stray list item
    result: dict[str, Any] = doc
    return result


# A line: (indent, "-" for a list item's dash or "" for a mapping entry, the rest).
_Line = tuple[int, str, str]


def _lines(text: str) -> list[_Line]:
    out: list[_Line] = []
    for raw in text.split("\n"):
        if "\t" in raw or "\r" in raw or not raw.isprintable():
            raise _NotSimple
        body = raw.lstrip(" ")
        if not body or body[0] == "#":
            continue  # blank, or a comment
        indent = len(raw) - len(body)
        if body[0] in "-?:" and (len(body) == 1 or body[1] == " "):
            if body[0] != "-":
                raise _NotSimple  # complex keys
            rest = body[1:].lstrip(" ")
            if not rest or rest[0] == "#":
                raise _NotSimple  # an item on the lines below
            out.append((indent, "-", ""))
            # The item's content sits at its own column, as YAML reads it.
            indent = len(raw) - len(rest)
            body = rest
            if body[0] == "-" and (len(body) == 1 or body[1] == " "):
                raise _NotSimple  # a list in a list
        if body.startswith(("---", "...", "%")):
            raise _NotSimple  # documents and directives
        out.append((indent, "", body))
    return out


def _block(lines: list[_Line], pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_NESTING:
        raise _NotSimple
    indent, dash, _ = lines[pos]
    if dash:
        return _sequence(lines, pos, indent, depth)
    return _mapping(lines, pos, indent, depth)


def _mapping(lines: list[_Line], pos: int, indent: int, depth: int) -> tuple[Any, int]:
    doc: dict[str, Any] = {}
    while pos < len(lines) and lines[pos][0] == indent and not lines[pos][1]:
        key, value = _entry(lines[pos][2])
        if key in doc:
            raise _NotSimple  # the full reader names the line
        pos += 1
        nxt = lines[pos] if pos < len(lines) else None
        if value is not None:
            doc[key] = _scalar(value)
            if nxt is not None and nxt[0] > indent:
                raise _NotSimple  # a value continued on the next line
        elif nxt is not None and (nxt[0] > indent or (nxt[0] == indent and nxt[1])):
            doc[key], pos = _block(lines, pos, depth + 1)
        else:
            doc[key] = None
    if pos < len(lines) and lines[pos][0] > indent:
        raise _NotSimple
    return doc, pos


def _sequence(lines: list[_Line], pos: int, indent: int, depth: int) -> tuple[Any, int]:
    items: list[Any] = []
    while pos < len(lines) and lines[pos][0] == indent and lines[pos][1]:
        pos += 1  # the dash; the item's content is the next line, further right
        column, _, body = lines[pos]
        if _is_entry(body):
            item, pos = _mapping(lines, pos, column, depth + 1)
        else:
            item = _scalar(body)
            pos += 1
            if pos < len(lines) and lines[pos][0] > indent:
                raise _NotSimple
        items.append(item)
    return items, pos


def _is_entry(body: str) -> bool:
    colon = body.find(":")
    return colon > 0 and (colon + 1 == len(body) or body[colon + 1] == " ")


def _entry(body: str) -> tuple[str, str | None]:
    """``key: value`` -> (key, value text); (key, None) when the value is on later lines."""
    colon = body.find(":")
    if colon <= 0 or not (colon + 1 == len(body) or body[colon + 1] == " "):
        raise _NotSimple
    key = body[:colon]
    if key[0] not in _LETTERS or not _KEY.issuperset(key) or key in _WORDS:
        raise _NotSimple  # quoted, numeric or boolean keys: the full reader's to judge
    rest = body[colon + 1 :].strip(" ")
    if not rest or rest[0] == "#":
        return key, None
    return key, rest


def _scalar(text: str) -> Any:
    """One value on one line (a comment after it allowed)."""
    first = text[0]
    if first in "\"'":
        end = text.find(first, 1)
        if first == "'":  # '' is a quote inside
            while end != -1 and text[end + 1 : end + 2] == "'":
                end = text.find("'", end + 2)
        if end == -1:
            raise _NotSimple  # continued on the next line
        inside, after = text[1:end], text[end + 1 :]
        if after and not (after[0] == " " and after.lstrip(" ")[:1] in ("", "#")):
            raise _NotSimple
        if first == '"':
            if "\\" in inside:
                raise _NotSimple  # escapes
            return inside
        return inside.replace("''", "'")
    cut = text.find(" #")
    plain = (text if cut == -1 else text[:cut]).rstrip(" ")
    if not _PLAIN.issuperset(plain) or ": " in plain or plain.endswith(":"):
        raise _NotSimple
    if plain in _WORDS:
        return _WORDS[plain]
    if first in _LETTERS or first in "/_" or plain.startswith(("./", "../", "~/")):
        return plain  # text: no YAML 1.1 type starts so, bar the words above
    number = plain[1:] if first == "-" else plain
    if number.isdigit() and number[0] != "0" and len(plain) <= MAX_NUMBER_CHARS:
        return int(plain)  # decimal, no leading zero (octal) and no _ or : (YAML 1.1)
    if plain == "0":
        return 0
    digits = plain.rstrip(_LETTERS)
    if first != "-" and digits.isdigit() and digits[0] != "0" and digits != plain:
        return plain  # a size: 512M, 8GiB (no int, float or date reads so)
    raise _NotSimple


def _resolve_paths(doc: dict[str, Any], base: str) -> dict[str, Any]:
    """As qumran.config.files.resolve_paths, with os.path in place of pathlib."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and "\0" not in value:
            return os.path.normpath(os.path.join(base, os.path.expanduser(value)))
        return value

    for container, field in _PATH_FIELDS:
        section = doc.get(container)
        if isinstance(section, dict) and field in section:
            section[field] = fix(section[field])
    disks = doc.get("disks")
    if isinstance(disks, list):
        for disk in disks:
            if isinstance(disk, dict) and "path" in disk:
                disk["path"] = fix(disk["path"])
    return doc
