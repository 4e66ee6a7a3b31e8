"""The snapshot file: a header, the machine's state as JSON, then guest RAM.

    offset 0     header (HEADER): magic, format version, the qumran version that wrote
                 it, where the state and RAM are, and two SHA-256 digests
    HEADER.size  the state: UTF-8 JSON (registers and device state, RAM's extents)
    mem_offset   RAM, ranges back to back, at a 2 MiB boundary so it can be mapped
                 straight from the file (MAP_PRIVATE: pages load when touched)

RAM is written sparse: only its ``extents`` (what may hold anything but zeros) are
written, the rest stays a hole that reads as zeros. The state digest covers the header
and the state (SHA-256); the RAM digest covers the extents' bytes: SHA-256 of the
Adler-32 of each CHUNK of them. RAM is checked to refuse a damaged or torn file, not to
resist a forger (whoever can write the file runs the VM anyway), and SHA-256 over all of
RAM cost seconds in the KVM test host (9 MB/s under TCG, against 690 MB/s for Adler-32:
BENCHMARKS.md, "Snapshot and restore"); each 8 MiB piece still has its own 32-bit
check. A check of the holes (SEEK_DATA) finds a byte written where the file should hold
none. A file is written as PATH.part, fsynced and renamed, so PATH is never a torn
write; a reader refuses a file from another format version, a truncated file or one
whose digests do not match, before anything of it is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import zlib

from qumran import __version__
from qumran.errors import InvalidArgument
from qumran.vmm.memory import GuestMemory

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"QUMRNSNP"
FORMAT_VERSION = 2  # 1: SHA-256 over all of RAM
# magic, format version, flags, qumran version, state length, RAM offset, RAM size,
# state digest (of the header with both digests zeroed, then the state), RAM digest.
HEADER = struct.Struct("<8sII32sQQQ32s32s")
RAM_ALIGN = 2 << 20
CHUNK = 8 << 20  # RAM moves in pieces of this size (a bounded buffer, GIL let go)


class SnapshotError(InvalidArgument):
    code = "bad-snapshot"


class Snapshot:
    """A checked snapshot file, open: its state, and RAM to map from :attr:`fd`."""

    def __init__(self, path: str, fd: int, state: dict[str, Any], mem_offset: int,
                 mem_size: int, version: str) -> None:  # fmt: skip
        self.path, self.fd, self.state = path, fd, state
        self.mem_offset, self.mem_size, self.version = mem_offset, mem_size, version

    def map_memory(self) -> GuestMemory:
        return GuestMemory.from_snapshot(self.fd, self.mem_offset, self.mem_size)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def _pack_header(state_len: int, mem_offset: int, mem_size: int, state_digest: bytes,
                 mem_digest: bytes) -> bytes:  # fmt: skip
    version = __version__.encode()[:32]
    return HEADER.pack(MAGIC, FORMAT_VERSION, 0, version, state_len, mem_offset, mem_size,
                       state_digest, mem_digest)  # fmt: skip


def write_snapshot(path: str, state: dict[str, Any], memory: GuestMemory) -> int:
    """Write ``state`` and ``memory`` to ``path`` (atomically); returns the bytes of RAM
    written. Caller holds the guest still (vCPUs paused, devices parked)."""
    part = path + ".part"
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SnapshotError(f"cannot create {part}: {exc.strerror}") from None
    try:
        written = _write_into(fd, path, state, memory)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    os.close(fd)
    try:
        os.rename(part, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise SnapshotError(f"cannot write snapshot {path}: {exc.strerror}") from None
    return written


def write_snapshot_fd(fd: int, state: dict[str, Any], memory: GuestMemory) -> int:
    """As :func:`write_snapshot`, into a file someone else opened (and renames into place
    once this returns: a torn write never has the final name)."""
    try:
        os.ftruncate(fd, 0)
    except OSError as exc:
        raise SnapshotError(f"cannot write the snapshot: {exc.strerror}") from None
    return _write_into(fd, "the file given", state, memory)


def _write_into(fd: int, where: str, state: dict[str, Any], memory: GuestMemory) -> int:
    extents = memory.data_extents()
    state = {**state, "memory": {"size": memory.size, "extents": extents}}
    body = json.dumps(state, separators=(",", ":")).encode()
    mem_offset = -(-(HEADER.size + len(body)) // RAM_ALIGN) * RAM_ALIGN
    try:
        image = memory.image()
        mem_hash = hashlib.sha256()
        written = 0
        try:
            for start, length in extents:
                for pos in range(start, start + length, CHUNK):
                    piece = image[pos : min(pos + CHUNK, start + length)]
                    mem_hash.update(zlib.adler32(piece).to_bytes(4, "little"))
                    _pwrite_all(fd, piece, mem_offset + pos)
                    written += len(piece)
        finally:
            image.release()
        unsigned = _pack_header(len(body), mem_offset, memory.size, bytes(32), bytes(32))
        state_digest = hashlib.sha256(unsigned + body).digest()
        header = _pack_header(len(body), mem_offset, memory.size, state_digest,
                              mem_hash.digest())  # fmt: skip
        _pwrite_all(fd, memoryview(header + body), 0)
        os.ftruncate(fd, mem_offset + memory.size)
        os.fsync(fd)
    except OSError as exc:
        raise SnapshotError(f"cannot write snapshot {where}: {exc.strerror}") from None
    return written


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_snapshot(path: str) -> Snapshot:
    """Open and check ``path`` whole; SnapshotError (one line) for anything wrong.
    ``fd=N``: the file is open already as N (qumrand opened it with the rights of the
    VM's owner, or in its own state folder); it is taken over."""
    if path.startswith("fd="):
        try:
            fd = int(path[3:])
            os.set_inheritable(fd, False)
        except (ValueError, OSError):
            raise SnapshotError(f"--restore {path}: not an open file") from None
        path = "the snapshot"
    else:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SnapshotError(f"cannot open snapshot {path}: {exc.strerror}") from None
    try:
        snap = _check(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return snap


class Head:
    """What a snapshot's header and state say, checked (its RAM not yet)."""

    def __init__(self, state: dict[str, Any], mem_offset: int, mem_size: int,
                 mem_digest: bytes, version: str) -> None:  # fmt: skip
        self.state, self.mem_offset, self.mem_size = state, mem_offset, mem_size
        self.mem_digest, self.version = mem_digest, version

    @property
    def machine(self) -> dict[str, Any]:
        """How the machine was built (name, boot files, memory, vCPUs, disks)."""
        origin = self.state.get("machine")
        return origin if isinstance(origin, dict) else {}


def read_head(fd: int, path: str, max_state: int = 64 << 20) -> Head:
    """The header and machine state of the snapshot open as ``fd``, their checksum and
    sizes checked; SnapshotError (one line naming ``path``) for anything wrong."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, HEADER.size, 0)
    if len(head) < HEADER.size or head[:8] != MAGIC:
        raise SnapshotError(f"{path} is not a qumran-vmm snapshot")
    (_, fmt, _, raw_version, state_len, mem_offset, mem_size, state_digest,
     mem_digest) = HEADER.unpack(head)  # fmt: skip
    version = raw_version.rstrip(b"\0").decode(errors="replace")
    if fmt != FORMAT_VERSION:
        raise SnapshotError(
            f"{path} is snapshot format {fmt} (written by qumran {version}); this qumran-vmm "
            f"({__version__}) reads format {FORMAT_VERSION} only: restore it with that version"
        )
    if (mem_offset % RAM_ALIGN or mem_offset < HEADER.size + state_len
            or size < mem_offset + mem_size or state_len > max_state):  # fmt: skip
        raise SnapshotError(f"{path} is truncated or damaged: {size} bytes, its header "
                            f"says {mem_offset + mem_size}")  # fmt: skip
    body = os.pread(fd, state_len, HEADER.size)
    if hashlib.sha256(head[: HEADER.size - 64] + bytes(64) + body).digest() != state_digest:
        raise SnapshotError(f"{path} is damaged: the checksum of its machine state does not match")
    try:
        state = json.loads(body)
        state["memory"]["extents"] = [(int(a), int(b)) for a, b in state["memory"]["extents"]]
        if state["memory"]["size"] != mem_size:
            raise SnapshotError(f"{path} is damaged: RAM sizes disagree")
    except (ValueError, KeyError, TypeError):
        raise SnapshotError(f"{path} is damaged: its machine state does not parse") from None
    return Head(state, mem_offset, mem_size, mem_digest, version)


def _check(path: str, fd: int) -> Snapshot:
    h = read_head(fd, path)
    extents: list[tuple[int, int]] = h.state["memory"]["extents"]
    if _ram_digest(fd, h.mem_offset, h.mem_size, extents) != h.mem_digest:
        raise SnapshotError(f"{path} is damaged: the checksum of its guest memory does not match")
    _check_holes(path, fd, h.mem_offset, h.mem_size, extents)
    return Snapshot(path, fd, h.state, h.mem_offset, h.mem_size, h.version)


def _ram_digest(fd: int, mem_offset: int, mem_size: int, extents: list[tuple[int, int]]) -> bytes:
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    last = 0
    for start, length in extents:
        if start < last or length <= 0 or start + length > mem_size:
            return b""  # overlapping or outside RAM: the state lies
        last = start + length
        for pos in range(start, last, CHUNK):  # the pieces the writer checked
            want = min(CHUNK, last - pos)
            got = 0
            while got < want:
                n = os.preadv(fd, [view[got:want]], mem_offset + pos + got)
                if n <= 0:
                    return b""
                got += n
            digest.update(zlib.adler32(view[:want]).to_bytes(4, "little"))
    return digest.digest()


def _check_holes(path: str, fd: int, mem_offset: int, mem_size: int,
                 extents: list[tuple[int, int]]) -> None:  # fmt: skip
    """Whatever the file holds outside the extents must be zeros. SEEK_DATA finds where
    it holds anything at all (on a file system without holes: everywhere, and this reads
    it through)."""
    end = mem_offset + mem_size
    gaps, pos = [], 0
    for start, length in extents:
        if start > pos:
            gaps.append((pos, start))
        pos = start + length
    if pos < mem_size:
        gaps.append((pos, mem_size))
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    zero = bytes(CHUNK)
    for gap_start, gap_end in gaps:
        pos, stop = mem_offset + gap_start, min(mem_offset + gap_end, end)
        while pos < stop:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                return  # ENXIO: no data anywhere after pos
            if data >= stop:
                break
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), stop)
            while data < hole:
                n = os.preadv(fd, [view[: min(CHUNK, hole - data)]], data)
                if n <= 0:
                    break
                if view[:n] != zero[:n]:
                    raise SnapshotError(f"{path} is damaged: guest memory holds bytes its "
                                        "checksum does not cover")  # fmt: skip
                data += n
            pos = hole
