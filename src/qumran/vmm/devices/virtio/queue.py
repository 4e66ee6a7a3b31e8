"""Split virtqueues (virtio 1.2, 2.7 "Split Virtqueues"), independent of devices and transports.

A queue is three areas in guest memory that the driver tells the device about: the
descriptor table (2.7.5), the driver ("available") ring (2.7.6) and the device ("used")
ring (2.7.8). The device pops descriptor chains from the available ring and pushes their
heads, with the number of bytes it wrote, onto the used ring.

Everything in these areas is written by the guest, so nothing is trusted: every address
goes through :meth:`GuestRam.view`, which refuses any range that is not RAM, and every
index, chain length and direction is checked. A broken ring raises :class:`QueueError`;
the device then sets DEVICE_NEEDS_RESET (2.1.1) and stops touching the queue.

Notification suppression (VIRTIO_F_RING_EVENT_IDX, 2.7.7 and 2.7.10): the driver writes
``used_event`` after its available ring ("interrupt me when used.idx passes this") and the
device writes ``avail_event`` after its used ring ("kick me when avail.idx passes this").
The device publishes ``avail_event`` only when it finds the ring empty, which is the only
time it waits for a kick; while it works through a batch, the stale value keeps the driver
from kicking at all.

Ordering: x86 keeps loads in order and stores in order, so reading ``avail.idx`` before the
ring entries and writing the used element before ``used.idx`` needs no explicit barrier
from Python. A store followed by a load of another location is the one reordering x86
allows, and both event-index handshakes are exactly that (write our index, then read the
driver's): there :func:`_full_fence` stands in for Linux's ``virtio_mb()``.
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Callable

from qumran.vmm.errors import VmmError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:  # typing costs every VMM process resident memory; a Protocol matters to checkers only
    Protocol = object

MAX_QUEUE_SIZE = 32768  # 2.7: Queue Size ... the maximum is 32768

# 2.7.5 struct virtq_desc: le64 addr, le32 len, le16 flags, le16 next.
DESC = struct.Struct("<QIHH")
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
# 2.7.6 struct virtq_avail: le16 flags, le16 idx, le16 ring[size], le16 used_event.
AVAIL_F_NO_INTERRUPT = 1
# 2.7.8 struct virtq_used: le16 flags, le16 idx, {le32 id, le32 len} ring[size], le16 avail_event.
#
# The rings are read and written through memoryviews cast to native 16- and 32-bit items
# (x86 is little-endian, as virtio 1.x is): an item store is one aligned store the driver
# sees whole. Not struct.pack_into, which clears the field before writing it, so a driver
# reading concurrently can see used.idx (or avail_event) go through 0.
assert sys.byteorder == "little", "virtqueue views assume a little-endian host"

# A locked instruction is a full barrier on x86; taking and dropping an uncontended lock is
# one (CPython's lock is a semaphore whose fast path is an atomic exchange).
_FENCE = threading.Lock()


def _full_fence() -> None:
    _FENCE.acquire()
    _FENCE.release()


def need_event(event: int, new: int, old: int) -> bool:
    """True if moving an index from ``old`` to ``new`` passed ``event`` (2.7.7.2 and
    2.7.10.2: notify when the index reaches event + 1), all modulo 2^16."""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


class QueueError(Exception):
    """The driver broke the queue; the device must report DEVICE_NEEDS_RESET."""


class GuestRam(Protocol):
    """Bounds-checked access to guest RAM.

    ``view`` returns a writable memoryview of ``length`` bytes at guest-physical ``gpa``
    and raises (ValueError or VmmError) for any range that is not entirely RAM.
    """

    def view(self, gpa: int, length: int) -> memoryview: ...


def ring_sizes(size: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, available ring and used ring for ``size`` entries."""
    return 16 * size, 6 + 2 * size, 6 + 8 * size


class DescChain:
    """One request: the head index, then its buffers split by direction (2.7.4.2)."""

    __slots__ = ("head", "readable", "writable")

    def __init__(self, head: int) -> None:
        self.head = head
        self.readable: list[memoryview] = []
        self.writable: list[memoryview] = []

    @property
    def readable_len(self) -> int:
        return sum(map(len, self.readable))

    @property
    def writable_len(self) -> int:
        return sum(map(len, self.writable))

    def read_all(self) -> bytes:
        """The device-readable bytes, concatenated (for small headers and control data)."""
        return b"".join(bytes(b) for b in self.readable)


_EMPTY = memoryview(b"")


def _view(ram: GuestRam, gpa: int, length: int, what: str) -> memoryview:
    if length == 0:
        return _EMPTY
    try:
        return ram.view(gpa, length)
    except (ValueError, VmmError) as exc:
        raise QueueError(f"{what} at {gpa:#x}+{length:#x} is not guest RAM") from exc


class SplitQueue:
    """One split virtqueue: the driver-set registers plus the device's ring positions."""

    def __init__(self, max_size: int) -> None:
        if not 0 < max_size <= MAX_QUEUE_SIZE or max_size & (max_size - 1):
            raise ValueError(f"queue size {max_size} is not a power of two <= {MAX_QUEUE_SIZE}")
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        """Back to the state after a device reset (4.1.4.3: queue_size reads the maximum)."""
        self.size = self.max_size
        self.ready = False
        self.indirect = False  # VIRTIO_F_INDIRECT_DESC negotiated
        self.event_idx = False  # VIRTIO_F_RING_EVENT_IDX negotiated
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.last_avail = 0
        self.next_used = 0
        self.signalled_used = 0  # used.idx when the driver was last considered for a notification
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None  # 16-bit items: flags, idx, ring, used_event
        self._used: memoryview | None = None  # 16-bit items: flags, idx, ..., avail_event
        self._used_ring: memoryview | None = None  # 32-bit items: flags+idx, (id, len)...

    def activate(self, ram: GuestRam) -> None:
        """Map the three areas the driver set; QueueError if they are not valid RAM."""
        size = self.size
        if not 0 < size <= self.max_size or size & (size - 1):
            raise QueueError(f"queue size {size} is not a power of two <= {self.max_size}")
        if self.desc_addr % 16 or self.avail_addr % 2 or self.used_addr % 4:
            raise QueueError("virtqueue areas are misaligned (2.7: 16, 2 and 4 bytes)")
        desc_len, avail_len, used_len = ring_sizes(size)
        self._desc = _view(ram, self.desc_addr, desc_len, "descriptor table")
        avail = _view(ram, self.avail_addr, avail_len, "driver ring")
        used = _view(ram, self.used_addr, used_len, "device ring")
        self._avail, self._used = avail.cast("H"), used.cast("H")
        self._used_ring = used[: used_len - 2].cast("I")
        self.last_avail = self._avail[1]
        self.next_used = self.signalled_used = self._used[1]
        self.ready = True

    _STATE = ("size", "ready", "indirect", "event_idx", "desc_addr", "avail_addr", "used_addr",
              "last_avail", "next_used", "signalled_used")  # fmt: skip

    def save_state(self) -> dict[str, int | bool]:
        return {n: getattr(self, n) for n in self._STATE}

    def load_state(self, state: dict[str, int | bool], ram: GuestRam) -> None:
        """The registers and ring positions of a snapshot; a ready queue is mapped again
        (QueueError if its areas are not RAM), keeping the saved positions, not the ones
        in the rings: the device may not have caught up with the driver's index."""
        self.release()
        self.reset()
        for n in self._STATE:
            setattr(self, n, state[n])
        if self.ready:
            self.activate(ram)
            for n in ("last_avail", "next_used", "signalled_used"):
                setattr(self, n, state[n])

    def release(self) -> None:
        """Drop the views into guest memory (before the memory is unmapped)."""
        self._desc = self._avail = self._used = self._used_ring = None
        self.ready = False

    # --- device side --------------------------------------------------------------------

    def pending(self) -> int:
        """Chains the driver has made available that the device has not taken yet."""
        if self._avail is None:
            return 0
        count: int = (self._avail[1] - self.last_avail) & 0xFFFF
        if count > self.size:
            raise QueueError(f"driver ring index moved {count} entries on a queue of {self.size}")
        return count

    def pop(self, ram: GuestRam) -> DescChain | None:
        """The next available chain, or None; QueueError if the ring is broken.

        With EVENT_IDX, finding the ring empty asks the driver to kick at its next chain
        (avail_event = the index we wait for), then looks once more: a chain published
        between the first look and that store would otherwise wait for a kick that the
        driver, reading the old avail_event, decided not to send (2.7.10).
        """
        if not self.pending():
            if not self.event_idx or self._used is None:
                return None
            self._used[2 + 4 * self.size] = self.last_avail
            _full_fence()
            if not self.pending():
                return None
        assert self._avail is not None
        slot = self.last_avail % self.size
        head = self._avail[2 + slot]
        chain = self._walk(ram, head)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return chain

    def pop_all(self, ram: GuestRam) -> list[DescChain]:
        """Every chain available now, in order; [] if none (publishing avail_event as
        :meth:`pop` does, so a device that loops until [] is kicked when more come)."""
        count = self.pending()
        if not count:
            chain = self.pop(ram)
            return [] if chain is None else [chain]
        assert self._avail is not None
        avail, size, last = self._avail, self.size, self.last_avail
        chains = []
        for _ in range(count):
            chains.append(self._walk(ram, avail[2 + last % size]))
            last = (last + 1) & 0xFFFF
            self.last_avail = last
        return chains

    def _walk(self, ram: GuestRam, head: int) -> DescChain:
        """Follow ``next`` links from ``head`` (2.7.5), at most ``size`` descriptors."""
        assert self._desc is not None
        chain = DescChain(head)
        if self._follow(ram, self._desc, self.size, head, chain):
            return chain
        raise QueueError(f"descriptor chain from {head} is longer than the queue (a loop?)")

    def _follow(
        self, ram: GuestRam, table: memoryview, count: int, index: int, chain: DescChain
    ) -> bool:
        """Walk ``table`` (``count`` entries) from ``index``; False if the chain never ends.

        An indirect descriptor (2.7.5.3) ends the chain and continues it in its own table,
        which must not hold another indirect descriptor.
        """
        nested = table is not self._desc
        view, unpack = ram.view, DESC.unpack_from  # the per-descriptor path: keep it lean
        low_end, low = getattr(ram, "low", (0, _EMPTY))  # RamViews: RAM from 0, no call
        readable, writable = chain.readable, chain.writable
        for _ in range(count):
            if index >= count:
                raise QueueError(f"descriptor index {index} outside a table of {count}")
            addr, length, flags, nxt = unpack(table, index << 4)
            if flags & DESC_F_INDIRECT:
                if not self.indirect or nested or flags & DESC_F_NEXT:
                    raise QueueError("indirect descriptor not allowed here (2.7.5.3.1)")
                entries = length // 16
                if length % 16 or not 0 < entries <= MAX_QUEUE_SIZE:
                    raise QueueError(f"indirect table of {length} bytes")
                inner = _view(ram, addr, length, "indirect descriptor table")
                if self._follow(ram, inner, entries, 0, chain):
                    return True
                raise QueueError("indirect descriptor chain does not end (a loop?)")
            if length and addr + length <= low_end:
                buf = low[addr : addr + length]
            elif length:
                try:
                    buf = view(addr, length)
                except (ValueError, VmmError) as exc:
                    where = f"{addr:#x}+{length:#x}"
                    raise QueueError(
                        f"buffer of descriptor {index} at {where} is not guest RAM"
                    ) from exc
            else:
                buf = _EMPTY
            if flags & DESC_F_WRITE:
                writable.append(buf)
            elif writable:
                raise QueueError("device-readable descriptor after a device-writable one")
            else:
                readable.append(buf)
            if not flags & DESC_F_NEXT:
                return True
            index = nxt
        return False

    def push(self, head: int, written: int) -> None:
        """Return chain ``head`` to the driver with ``written`` bytes written (2.7.8)."""
        ring, used = self._used_ring, self._used
        assert ring is not None and used is not None
        slot = 1 + 2 * (self.next_used % self.size)
        ring[slot] = head
        ring[slot + 1] = min(written, 0xFFFF_FFFF)  # le32 len (a hostile chain can be longer)
        self.next_used = (self.next_used + 1) & 0xFFFF
        used[1] = self.next_used  # after the element: x86 keeps stores in order

    def notify_needed(self) -> bool:
        """Whether the chains pushed since the last call call for a used buffer
        notification (2.7.7): with EVENT_IDX, if used.idx passed the driver's used_event;
        without, unless the driver set VIRTQ_AVAIL_F_NO_INTERRUPT."""
        avail = self._avail
        if avail is None:
            return False
        new, old = self.next_used, self.signalled_used
        self.signalled_used = new
        _full_fence()  # our used.idx store before the driver's flags / used_event load
        if self.event_idx:
            return need_event(avail[2 + self.size], new, old)
        return not avail[0] & AVAIL_F_NO_INTERRUPT


class RamViews:
    """Fast :class:`GuestRam` over a RAM object that can hand out one view per range.

    ``ranges`` is [(guest address, size)]; ``whole(gpa, size)`` returns a view of one whole
    range. Each lookup is then a comparison and a slice, instead of a new buffer export
    per descriptor (which costs more than the rest of the descriptor's handling).
    """

    def __init__(self, ranges: list[tuple[int, int]], whole: Callable[[int, int], memoryview]):
        self._ranges = [(start, start + size, whole(start, size)) for start, size in ranges]
        # (end, view) of the range starting at 0, sliced inline by the descriptor walk.
        self.low = next(((stop, mv) for start, stop, mv in self._ranges if start == 0), (0, _EMPTY))

    def view(self, gpa: int, length: int) -> memoryview:
        end = gpa + length
        for start, stop, mv in self._ranges:
            if start <= gpa and end <= stop:
                return mv[gpa - start : end - start]
        raise ValueError(f"guest range {gpa:#x}+{length:#x} is not RAM")

    def release(self) -> None:
        self._ranges = []
        self.low = (0, _EMPTY)
