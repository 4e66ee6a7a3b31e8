"""Plain guest memory and a driver-side ring builder, for virtqueue and device tests."""

from __future__ import annotations

import struct

from qumran.vmm.devices.virtio.queue import DESC_F_NEXT, DESC_F_WRITE, SplitQueue


class PlainRam:
    """Guest RAM as a bytearray; ``view`` refuses anything outside it, like GuestMemory."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.data = bytearray(size)
        self.views = 0

    def view(self, gpa: int, length: int) -> memoryview:
        if gpa < 0 or length < 0 or gpa + length > len(self.data):
            raise ValueError(f"{gpa:#x}+{length:#x} is not RAM")
        self.views += 1
        return memoryview(self.data)[gpa : gpa + length]


class RingBuilder:
    """Plays the driver: lays out a queue in PlainRam and makes chains available."""

    DESC, AVAIL, USED, BUFFERS = 0x1000, 0x3000, 0x4000, 0x10000

    def __init__(self, ram: PlainRam, size: int = 8) -> None:
        self.ram, self.size = ram, size
        self.next_desc = 0
        self.avail_idx = 0
        self.next_buf = self.BUFFERS

    def queue(self, max_size: int | None = None) -> SplitQueue:
        q = SplitQueue(max_size or self.size)
        q.size = self.size
        q.desc_addr, q.avail_addr, q.used_addr = self.DESC, self.AVAIL, self.USED
        q.activate(self.ram)
        return q

    def buffer(self, data: bytes | int) -> tuple[int, int]:
        """Place data (or reserve n zero bytes) in RAM: (address, length)."""
        raw = bytes(data) if isinstance(data, int) else data
        if self.next_buf + len(raw) > len(self.ram.data):
            self.next_buf = self.BUFFERS  # reuse: tests consume buffers before wrapping
        addr = self.next_buf
        self.ram.data[addr : addr + len(raw)] = raw
        self.next_buf += (len(raw) + 15) & ~15
        return addr, len(raw)

    def set_desc(self, index: int, addr: int, length: int, flags: int, nxt: int = 0) -> None:
        struct.pack_into("<QIHH", self.ram.data, self.DESC + 16 * index, addr, length, flags, nxt)

    def add_chain(self, out: list[bytes] = (), in_: list[int] = ()) -> int:  # type: ignore[assignment]
        """A chain of device-readable ``out`` buffers then device-writable ``in_`` sizes."""
        parts = [(self.buffer(b), 0) for b in out] + [(self.buffer(n), DESC_F_WRITE) for n in in_]
        head = self.next_desc
        for i, ((addr, length), flags) in enumerate(parts):
            index = (head + i) % self.size
            last = i == len(parts) - 1
            self.set_desc(index, addr, length, flags | (0 if last else DESC_F_NEXT),
                          (index + 1) % self.size)  # fmt: skip
        self.next_desc = (head + len(parts)) % self.size
        self.publish(head)
        return head

    def publish(self, head: int) -> None:
        struct.pack_into(
            "<H", self.ram.data, self.AVAIL + 4 + 2 * (self.avail_idx % self.size), head
        )
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.ram.data, self.AVAIL + 2, self.avail_idx)

    def set_avail_idx(self, idx: int) -> None:
        struct.pack_into("<H", self.ram.data, self.AVAIL + 2, idx)

    def set_used_event(self, idx: int) -> None:
        """VIRTIO_F_RING_EVENT_IDX: interrupt me when used.idx passes ``idx`` (2.7.7.2)."""
        struct.pack_into("<H", self.ram.data, self.AVAIL + 4 + 2 * self.size, idx)

    def avail_event(self) -> int:
        """What the device asks: kick me when avail.idx passes this (2.7.10)."""
        return int(struct.unpack_from("<H", self.ram.data, self.USED + 4 + 8 * self.size)[0])

    def used(self) -> list[tuple[int, int]]:
        idx = struct.unpack_from("<H", self.ram.data, self.USED + 2)[0]
        return [struct.unpack_from("<II", self.ram.data, self.USED + 4 + 8 * (i % self.size))
                for i in range(idx)]  # fmt: skip

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.ram.data[addr : addr + length])
