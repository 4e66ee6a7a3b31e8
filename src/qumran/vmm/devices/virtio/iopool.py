"""Positional reads and writes of one batch, spread over helper threads when it is large.

Most of a large disk request's cost is the copy between the image's page cache and guest
memory, done by the kernel inside ``preadv``/``pwritev``, which release the GIL. So the
device thread splits a large batch into parts of about equal size (cutting a request
between two buffers, or inside one, where needed), hands all parts but one to helpers,
copies its own part and waits: the copies run on several CPUs at once, as independent
requests do in QEMU's ``aio=threads`` pool. Only reads are shared out (writes to one
file serialise in the kernel), and only when they add up to ``split_bytes``: handing work
to a thread costs more than a small copy.

The caller still sees one synchronous call, so completion order, flush ordering and the
used ring stay the device's business, unchanged.
"""

from __future__ import annotations

import os
import queue
import threading

from qumran.vmm import confine
from qumran.vmm.proctitle import set_thread_name

SPLIT_BYTES = 256 << 10
MAX_HELPERS = 3  # the guest's vCPU threads want CPUs too
PAGE = 4096


class Transfer:
    """One request's data: ``views`` of guest memory to or from the image at ``offset``.

    A ``length`` of -1 marks a request refused before any I/O (out of range, read-only):
    :meth:`IoPool.run` leaves it alone. After the run, ``ok`` says whether every byte
    moved. ``head`` and ``status`` are the device's: the request's chain and status byte.
    """

    __slots__ = ("head", "length", "moved", "offset", "ok", "status", "views", "write")

    def __init__(self, write: bool, views: list[memoryview], offset: int, length: int) -> None:
        self.write, self.views, self.offset, self.length = write, views, offset, length
        self.moved = 0
        self.ok = False
        self.head = 0
        self.status = memoryview(b"")


# A part of a batch: (transfer, views, offset, length) pieces; a request may span parts.
_Piece = tuple[Transfer, list[memoryview], int, int]


def default_helpers() -> int:
    return max(0, min((os.cpu_count() or 1) - 1, MAX_HELPERS))


class IoPool:
    def __init__(self, fd: int, helpers: int, split_bytes: int = SPLIT_BYTES) -> None:
        self.fd, self.split_bytes = fd, split_bytes
        self._jobs: queue.SimpleQueue[list[_Piece] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[list[tuple[Transfer, int]]] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._helper, name=f"virtio-blk-io{i}", daemon=True)
            for i in range(helpers)
        ]
        for t in self._threads:
            t.start()
        self.split_batches = 0  # batches that used the helpers (for the status counters)

    def run(self, transfers: list[Transfer]) -> None:
        """Move every transfer's data; set each one's ``ok``."""
        if len(transfers) == 1:  # the common case at queue depth 1: no list of pieces
            t = transfers[0]
            if t.length < 0:
                return
            if t.write or t.length < self.split_bytes or not self._threads:
                n = _io(self.fd, t.write, t.views, t.offset, t.length)
                t.moved, t.ok = max(n, 0), n == t.length
                return
        transfers = [t for t in transfers if t.length >= 0]
        # Buffered writes to one file take its inode lock in the kernel, so writes done in
        # parallel only wait (spinning) for each other: they stay on the calling thread,
        # and the reads are shared out around them.
        writes = [(t, t.views, t.offset, t.length) for t in transfers if t.write]
        reads = [(t, t.views, t.offset, t.length) for t in transfers if not t.write]
        read_bytes = sum(p[3] for p in reads)
        if not self._threads or read_bytes < self.split_bytes:
            results = self._move(writes + reads)
        else:
            self.split_batches += 1
            write_bytes = sum(p[3] for p in writes)
            parts = _partition(reads, write_bytes, len(self._threads) + 1)
            for part in parts[1:]:
                self._jobs.put(part)
            results = self._move(writes + parts[0])
            for _ in parts[1:]:
                results += self._done.get()
        for t in transfers:
            t.moved, t.ok = 0, True
        for t, n in results:
            if n < 0:
                t.ok = False
            else:
                t.moved += n
        for t in transfers:
            t.ok = t.ok and t.moved == t.length

    def _move(self, pieces: list[_Piece]) -> list[tuple[Transfer, int]]:
        """Each piece's transfer and the bytes it moved, -1 after an error."""
        fd = self.fd
        return [(t, _io(fd, t.write, views, offset, length)) for t, views, offset, length in pieces]

    def _helper(self) -> None:
        set_thread_name(threading.current_thread().name)
        confine.enter("blk")
        while (part := self._jobs.get()) is not None:
            self._done.put(self._move(part))

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(10)
        self._threads = []


def _io(fd: int, write: bool, views: list[memoryview], offset: int, length: int) -> int:
    """``length`` bytes between ``views`` and the file at ``offset``: ``length``, or -1
    after an error or a short transfer."""
    try:
        n = (os.pwritev if write else os.preadv)(fd, views, offset) if length else 0
    except OSError:
        return -1
    return n if n == length else -1


def _partition(pieces: list[_Piece], start: int, count: int) -> list[list[_Piece]]:
    """``count`` parts of about equal bytes, in order, cutting pieces as needed, the first
    part already holding ``start`` bytes of other work (it may get no piece at all)."""
    total = start + sum(p[3] for p in pieces)
    share = -(-total // (count * PAGE)) * PAGE  # whole pages: no page copied in two parts
    parts: list[list[_Piece]] = [[]]
    room = share - start
    for t, views, offset, length in pieces:
        while length > room and len(parts) < count:
            if room > 0:
                head, views = _cut(views, room)
                parts[-1].append((t, head, offset, room))
                offset, length = offset + room, length - room
            parts.append([])
            room = share
        parts[-1].append((t, views, offset, length))
        room -= length
    return parts


def _cut(views: list[memoryview], n: int) -> tuple[list[memoryview], list[memoryview]]:
    """Views of the first ``n`` bytes and of the rest."""
    head: list[memoryview] = []
    for i, v in enumerate(views):
        if n <= 0:
            return head, views[i:]
        if len(v) <= n:
            head.append(v)
            n -= len(v)
        else:
            head.append(v[:n])
            return head, [v[n:], *views[i + 1 :]]
    return head, []
