"""Initramfs archives in the "newc" cpio format, written and read in pure Python.

The format is described in the kernel's
``Documentation/driver-api/early-userspace/buffer-format.rst``: each entry is a 110-byte
ASCII header (magic ``070701`` and thirteen 8-digit hex fields), the NUL-terminated name
padded to a multiple of four bytes, then the data padded the same way. The archive ends
with an entry named ``TRAILER!!!``. Archives here are reproducible: every mtime, uid and gid
is zero and entries keep the order they were added in.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qumran.images.errors import ArchiveError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_LEN = 110
_FIELDS = (
    "ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
    "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check",
)  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """One archive member. ``data`` is a file's content or a symlink's target."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @property
    def kind(self) -> str:
        return {
            stat.S_IFREG: "file",
            stat.S_IFDIR: "dir",
            stat.S_IFLNK: "symlink",
            stat.S_IFCHR: "chardev",
        }.get(stat.S_IFMT(self.mode), "other")


def file(path: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(_clean(path), stat.S_IFREG | mode, data)


def directory(path: str, mode: int = 0o755) -> Entry:
    return Entry(_clean(path), stat.S_IFDIR | mode)


def symlink(path: str, target: str) -> Entry:
    return Entry(_clean(path), stat.S_IFLNK | 0o777, target.encode())


def chardev(path: str, major: int, minor: int, mode: int = 0o600) -> Entry:
    return Entry(_clean(path), stat.S_IFCHR | mode, rdev=(major, minor))


def _clean(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ArchiveError(f"bad archive path {path!r}")
    return "/".join(parts)


class Archive:
    """An ordered set of entries; parents are added before children automatically."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._entries: dict[str, Entry] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: Entry) -> None:
        """Add ``entry``, creating missing parent directories. A later entry replaces one
        at the same path (so a caller can override a file), keeping its position."""
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in self._entries:
                self._entries[parent] = directory(parent)
        self._entries[entry.path] = entry

    def extend(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.add(entry)

    @property
    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def to_bytes(self) -> bytes:
        chunks = [_member(ino, e) for ino, e in enumerate(self._entries.values(), start=1)]
        chunks.append(_member(0, Entry(TRAILER, 0)))
        return b"".join(chunks)

    def write_gzip(self, target: Path) -> None:
        """Write the gzip-compressed archive to ``target`` atomically (temp file + rename)."""
        # mtime=0 keeps the gzip header, and so the whole image, reproducible.
        write_atomic(target, gzip.compress(self.to_bytes(), compresslevel=6, mtime=0))


def write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so readers, and concurrent builders, never see a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _member(ino: int, entry: Entry) -> bytes:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    values = (
        ino, entry.mode, 0, 0, nlink, 0, len(entry.data),
        0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
    )  # fmt: skip
    header = MAGIC + b"".join(b"%08X" % v for v in values)
    return header + name + _pad(_HEADER_LEN + len(name)) + entry.data + _pad(len(entry.data))


def parse(data: bytes) -> list[Entry]:
    """Parse an uncompressed newc archive (or a gzip one) up to its trailer."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    entries: list[Entry] = []
    pos = 0
    while True:
        header = data[pos : pos + _HEADER_LEN]
        if len(header) < _HEADER_LEN or header[:6] != MAGIC:
            raise ArchiveError(f"no newc header at offset {pos}")
        try:
            values = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError as exc:
            raise ArchiveError(f"bad header field at offset {pos}") from exc
        fields = dict(zip(_FIELDS, values, strict=True))
        name_end = pos + _HEADER_LEN + fields["namesize"]
        data_start = name_end + len(_pad(_HEADER_LEN + fields["namesize"]))
        data_end = data_start + fields["filesize"]
        if fields["namesize"] == 0 or data_end > len(data) or data[name_end - 1] != 0:
            raise ArchiveError(f"truncated or malformed entry at offset {pos}")
        name = data[pos + _HEADER_LEN : name_end - 1].decode()
        if name == TRAILER:
            return entries
        rdev = (fields["rdevmajor"], fields["rdevminor"])
        entries.append(Entry(name, fields["mode"], data[data_start:data_end], rdev))
        pos = data_end + len(_pad(fields["filesize"]))
