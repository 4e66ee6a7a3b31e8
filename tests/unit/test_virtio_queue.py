"""Split virtqueues on plain memory: the normal path and hostile rings."""

from __future__ import annotations

import struct

import pytest
from virtio_rings import PlainRam, RingBuilder

from qumran.vmm.devices.virtio.queue import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    QueueError,
    SplitQueue,
)


@pytest.fixture
def ring() -> RingBuilder:
    return RingBuilder(PlainRam())


def test_pop_gives_buffers_by_direction_and_push_fills_the_used_ring(ring: RingBuilder) -> None:
    q = ring.queue()
    head = ring.add_chain([b"header", b"payload"], [16, 1])
    chain = q.pop(ring.ram)
    assert chain is not None and chain.head == head
    assert [bytes(b) for b in chain.readable] == [b"header", b"payload"]
    assert [len(b) for b in chain.writable] == [16, 1]
    chain.writable[0][:5] = b"hello"  # the view writes straight into guest memory
    q.push(chain.head, 5)
    assert ring.used() == [(head, 5)]
    assert q.pop(ring.ram) is None


def test_indices_wrap_around_16_bits(ring: RingBuilder) -> None:
    q = ring.queue()
    for _ in range(70000 // 8):  # each round fills and drains the whole ring
        for _ in range(8):
            ring.add_chain([b"x"])
        while (c := q.pop(ring.ram)) is not None:
            q.push(c.head, 0)
    assert q.last_avail == ring.avail_idx


def test_no_interrupt_flag(ring: RingBuilder) -> None:
    q = ring.queue()
    assert q.notify_needed()
    struct.pack_into("<H", ring.ram.data, ring.AVAIL, 1)
    assert not q.notify_needed()


@pytest.mark.parametrize("size", [0, 3, 16])
def test_bad_queue_size_is_refused_at_activation(ring: RingBuilder, size: int) -> None:
    q = SplitQueue(8)
    q.size, q.desc_addr, q.avail_addr, q.used_addr = size, ring.DESC, ring.AVAIL, ring.USED
    with pytest.raises(QueueError):
        q.activate(ring.ram)


@pytest.mark.parametrize("area", ["desc_addr", "avail_addr", "used_addr"])
def test_rings_outside_guest_memory(ring: RingBuilder, area: str) -> None:
    q = SplitQueue(8)
    q.desc_addr, q.avail_addr, q.used_addr = ring.DESC, ring.AVAIL, ring.USED
    setattr(q, area, len(ring.ram.data) - 16)  # starts inside, ends outside
    with pytest.raises(QueueError, match="not guest RAM"):
        q.activate(ring.ram)
    setattr(q, area, 1 << 62)
    with pytest.raises(QueueError):
        q.activate(ring.ram)


def test_misaligned_rings(ring: RingBuilder) -> None:
    q = SplitQueue(8)
    q.desc_addr, q.avail_addr, q.used_addr = ring.DESC + 8, ring.AVAIL, ring.USED
    with pytest.raises(QueueError, match="misaligned"):
        q.activate(ring.ram)


@pytest.mark.parametrize("addr", [1 << 20, (1 << 20) - 4, 1 << 63, 0xFFFF_FFFF_FFFF_FFF0])
def test_buffer_outside_guest_memory(ring: RingBuilder, addr: int) -> None:
    q = ring.queue()
    ring.set_desc(0, addr, 64, 0)
    ring.publish(0)
    with pytest.raises(QueueError, match="not guest RAM"):
        q.pop(ring.ram)


def test_descriptor_loop(ring: RingBuilder) -> None:
    q = ring.queue()
    a, n = ring.buffer(8)
    ring.set_desc(0, a, n, DESC_F_NEXT, 1)
    ring.set_desc(1, a, n, DESC_F_NEXT, 0)
    ring.publish(0)
    with pytest.raises(QueueError, match="longer than the queue"):
        q.pop(ring.ram)


def test_self_loop_and_chain_longer_than_the_queue(ring: RingBuilder) -> None:
    q = ring.queue()
    a, n = ring.buffer(8)
    ring.set_desc(3, a, n, DESC_F_NEXT, 3)
    ring.publish(3)
    with pytest.raises(QueueError):
        q.pop(ring.ram)


def test_next_index_outside_the_table(ring: RingBuilder) -> None:
    q = ring.queue()
    a, n = ring.buffer(8)
    ring.set_desc(0, a, n, DESC_F_NEXT, 9)
    ring.publish(0)
    with pytest.raises(QueueError, match="outside a table"):
        q.pop(ring.ram)


def test_head_outside_the_table(ring: RingBuilder) -> None:
    q = ring.queue()
    ring.publish(200)
    with pytest.raises(QueueError, match="outside a table"):
        q.pop(ring.ram)


def test_readable_after_writable_is_refused(ring: RingBuilder) -> None:
    q = ring.queue()
    a, n = ring.buffer(8)
    ring.set_desc(0, a, n, DESC_F_WRITE | DESC_F_NEXT, 1)
    ring.set_desc(1, a, n, 0)
    ring.publish(0)
    with pytest.raises(QueueError, match="readable descriptor after"):
        q.pop(ring.ram)


def test_indirect_descriptor_not_negotiated(ring: RingBuilder) -> None:
    q = ring.queue()
    a, _ = ring.buffer(32)
    ring.set_desc(0, a, 32, DESC_F_INDIRECT)
    ring.publish(0)
    with pytest.raises(QueueError, match="indirect"):
        q.pop(ring.ram)


def test_avail_index_jumping_past_the_queue_size(ring: RingBuilder) -> None:
    q = ring.queue()
    ring.set_avail_idx(9)
    with pytest.raises(QueueError, match="moved 9 entries"):
        q.pop(ring.ram)


def test_zero_length_buffer_anywhere_is_harmless(ring: RingBuilder) -> None:
    q = ring.queue()
    ring.set_desc(0, 1 << 63, 0, 0)
    ring.publish(0)
    chain = q.pop(ring.ram)
    assert chain is not None and chain.readable_len == 0


def test_random_rings_never_escape(ring: RingBuilder) -> None:
    """Garbage in every area: only QueueError or chains whose views lie inside RAM."""
    import random

    rnd = random.Random(4)
    for _ in range(300):
        ram = PlainRam(1 << 16)
        ram.data[:0x8000] = rnd.randbytes(0x8000)
        q = SplitQueue(8)
        q.desc_addr, q.avail_addr, q.used_addr = 0x1000, 0x3000, 0x4000
        try:
            q.activate(ram)
            for _ in range(10):
                chain = q.pop(ram)
                if chain is None:
                    break
                q.push(chain.head, chain.writable_len)
        except QueueError:
            pass


def _indirect_table(ring: RingBuilder, entries: list[tuple[int, int, int, int]]) -> int:
    addr, _ = ring.buffer(16 * len(entries))
    for i, entry in enumerate(entries):
        struct.pack_into("<QIHH", ring.ram.data, addr + 16 * i, *entry)
    return addr


def test_indirect_chain_when_negotiated(ring: RingBuilder) -> None:
    q = ring.queue()
    q.indirect = True
    hdr, n = ring.buffer(b"head")
    out, m = ring.buffer(32)
    table = _indirect_table(ring, [(hdr, n, DESC_F_NEXT, 1), (out, m, DESC_F_WRITE, 0)])
    ring.set_desc(0, table, 32, DESC_F_INDIRECT)
    ring.publish(0)
    chain = q.pop(ring.ram)
    assert chain is not None and chain.head == 0
    assert chain.read_all() == b"head" and chain.writable_len == 32


@pytest.mark.parametrize(
    ("entries", "flags", "length", "message"),
    [
        ([(0x10000, 8, DESC_F_NEXT, 0)], DESC_F_INDIRECT, 16, "does not end"),
        ([(0x10000, 8, DESC_F_NEXT, 5), (0x10000, 8, 0, 0)], DESC_F_INDIRECT, 32, "outside a"),
        ([(0x10000, 16, DESC_F_INDIRECT, 0)], DESC_F_INDIRECT, 16, "not allowed"),
        ([(0x10000, 8, 0, 0)], DESC_F_INDIRECT | DESC_F_NEXT, 16, "not allowed"),
        ([(0x10000, 8, 0, 0)], DESC_F_INDIRECT, 17, "indirect table of 17"),
        ([(0x10000, 8, 0, 0)], DESC_F_INDIRECT, 0, "indirect table of 0"),
    ],
)
def test_hostile_indirect_tables(
    ring: RingBuilder, entries: list[tuple[int, int, int, int]], flags: int, length: int,
    message: str,
) -> None:  # fmt: skip
    q = ring.queue()
    q.indirect = True
    table = _indirect_table(ring, entries)
    ring.set_desc(0, table, length, flags, 1)
    ring.set_desc(1, table, 16, 0)
    ring.publish(0)
    with pytest.raises(QueueError, match=message):
        q.pop(ring.ram)


def test_indirect_table_outside_guest_memory(ring: RingBuilder) -> None:
    q = ring.queue()
    q.indirect = True
    ring.set_desc(0, (1 << 20) - 16, 64, DESC_F_INDIRECT)
    ring.publish(0)
    with pytest.raises(QueueError, match="not guest RAM"):
        q.pop(ring.ram)


def test_ram_views_fast_path_keeps_the_bounds() -> None:
    """RamViews (what the VMM uses) over two ranges, as below and above the MMIO gap."""
    from qumran.vmm.devices.virtio.queue import RamViews

    backing = {0: bytearray(1 << 20), 1 << 32: bytearray(1 << 16)}
    ram = RamViews([(0, 1 << 20), (1 << 32, 1 << 16)],
                   lambda start, size: memoryview(backing[start])[:size])  # fmt: skip
    builder = RingBuilder(PlainRam())
    builder.ram = ram  # type: ignore[assignment]
    builder.ram.data = backing[0]  # type: ignore[attr-defined]
    q = builder.queue()
    builder.set_desc(0, (1 << 20) - 8, 8, DESC_F_NEXT, 1)
    builder.set_desc(1, 1 << 32, 16, DESC_F_WRITE)
    builder.publish(0)
    chain = q.pop(ram)
    assert chain is not None and [len(v) for v in chain.readable + chain.writable] == [8, 16]
    chain.writable[0][:2] = b"hi"
    assert backing[1 << 32][:2] == b"hi"
    for addr, length in (((1 << 20) - 8, 16), ((1 << 32) - 4, 8), ((1 << 32) + 0xFFF8, 16)):
        builder.set_desc(0, addr, length, 0)
        builder.publish(0)
        with pytest.raises(QueueError, match="not guest RAM"):
            q.pop(ram)
        q.last_avail = builder.avail_idx


# --- VIRTIO_F_RING_EVENT_IDX (2.7.7.2, 2.7.10) --------------------------------------------


def _event_idx_queue(ring: RingBuilder) -> SplitQueue:
    q = ring.queue()
    q.event_idx = True
    return q


def test_need_event_is_the_wrapping_window_of_the_spec() -> None:
    from qumran.vmm.devices.virtio.queue import need_event

    assert need_event(0, 1, 0)  # index went 0 -> 1 and the driver waits for 0 -> 1
    assert not need_event(5, 3, 0)  # not there yet
    assert need_event(5, 9, 3) and not need_event(5, 9, 6)  # passed once, not again
    assert need_event(0xFFFF, 2, 0xFFFE) and need_event(0, 1, 0xFFFF)  # across the wrap
    assert not need_event(0xFFFE, 3, 0xFFFF)  # the event lies before the window
    assert not need_event(7, 7, 7)  # nothing moved


def test_avail_event_is_published_when_the_device_finds_the_ring_empty(
    ring: RingBuilder,
) -> None:
    q = _event_idx_queue(ring)
    ring.add_chain([b"a"])
    ring.add_chain([b"b"])
    assert q.pop(ring.ram) is not None and q.pop(ring.ram) is not None
    assert ring.avail_event() == 0  # still busy: the stale value keeps the driver quiet
    assert q.pop(ring.ram) is None
    assert ring.avail_event() == 2  # waiting: kick me for the chain after the second


def test_avail_event_is_the_two_bytes_after_the_used_ring(ring: RingBuilder) -> None:
    q = _event_idx_queue(ring)
    end = ring.USED + 4 + 8 * ring.size  # 2.7.8: flags, idx, ring[size], then avail_event
    ring.ram.data[end - 8 : end + 8] = b"\xee" * 16
    assert q.pop(ring.ram) is None
    assert ring.ram.data[end - 8 : end + 8] == b"\xee" * 8 + b"\0\0" + b"\xee" * 6


def test_without_event_idx_the_device_never_writes_avail_event(ring: RingBuilder) -> None:
    q = ring.queue()
    struct.pack_into("<H", ring.ram.data, ring.USED + 4 + 8 * ring.size, 0xABCD)
    ring.add_chain([b"a"])
    while q.pop(ring.ram) is not None:
        pass
    assert ring.avail_event() == 0xABCD


def test_used_event_decides_each_notification(ring: RingBuilder) -> None:
    q = _event_idx_queue(ring)
    struct.pack_into("<H", ring.ram.data, ring.AVAIL, 1)  # NO_INTERRUPT: ignored with EVENT_IDX
    ring.set_used_event(2)  # "interrupt me when used.idx goes past 2", i.e. reaches 3
    for expected in (False, False, True, False):
        ring.add_chain([b"x"])
        chain = q.pop(ring.ram)
        assert chain is not None
        q.push(chain.head, 0)
        assert q.notify_needed() is expected
    # A batch that jumps over the event notifies once.
    ring.set_used_event(5)
    for _ in range(4):
        ring.add_chain([b"x"])
    while (chain := q.pop(ring.ram)) is not None:
        q.push(chain.head, 0)
    assert q.notify_needed() and not q.notify_needed()


def test_event_indices_across_the_16_bit_wrap(ring: RingBuilder) -> None:
    """Driver and device both keep going through 65535 -> 0; one interrupt per batch and
    avail_event always names the next chain."""
    q = _event_idx_queue(ring)
    notified = 0
    for batch in range(70000 // 4):
        ring.set_used_event(q.next_used)  # the driver's "next completion, please"
        for _ in range(4):
            ring.add_chain([b"x"])
        while (chain := q.pop(ring.ram)) is not None:
            q.push(chain.head, 0)
        assert ring.avail_event() == ring.avail_idx
        notified += q.notify_needed()
        assert not q.notify_needed(), batch
    assert notified == 70000 // 4
    assert q.next_used == q.last_avail == ring.avail_idx == 70000 % 65536


def test_hostile_event_indices_are_only_numbers(ring: RingBuilder) -> None:
    """Whatever used_event says, the device only decides whether to notify."""
    import random

    q = _event_idx_queue(ring)
    rnd = random.Random(5)
    for _ in range(2000):
        ring.set_used_event(rnd.getrandbits(16))
        ring.add_chain([b"x"])
        chain = q.pop(ring.ram)
        assert chain is not None
        q.push(chain.head, 0)
        q.notify_needed()
    assert len(ring.used()) == q.next_used


def test_a_driver_reading_concurrently_never_sees_a_half_written_index() -> None:
    """Another process (a driver on another CPU) polls used.idx while the device pushes
    across 0x00ff -> 0x0100 again and again: it only ever sees values the device wrote,
    never a torn or cleared one."""
    import mmap
    import os
    import time

    ram = PlainRam(0)
    ram.data = mmap.mmap(-1, 1 << 20)  # type: ignore[assignment]  # shared with the child
    ring = RingBuilder(ram, size=256)
    q = ring.queue()
    low, high = 0xF0, 0x110
    q.push(0, 0)
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # the "driver": load the 16-bit index the way a CPU does, in one load
        used_idx = memoryview(ram.data).cast("H")[ring.USED // 2 + 1 :][:1]
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            for _ in range(10000):
                value = used_idx[0]
                if not (value == 1 or low < value <= high):
                    os.write(write_fd, f"{value:#x}".encode())
                    os._exit(0)
        os._exit(0)
    os.close(write_fd)
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            q.next_used = low
            for _ in range(high - low):
                q.push(0, 0)
    finally:
        os.waitpid(child, 0)
        bad = os.read(read_fd, 100).decode()
        os.close(read_fd)
    assert bad == "", f"the driver saw used.idx = {bad}"


def test_pop_all_takes_the_batch_and_arms_only_when_empty(ring: RingBuilder) -> None:
    q = _event_idx_queue(ring)
    heads = [ring.add_chain([bytes([i])]) for i in range(3)]
    assert [c.head for c in q.pop_all(ring.ram)] == heads
    assert ring.avail_event() == 0  # found work: no kick wanted yet
    assert q.pop_all(ring.ram) == []
    assert ring.avail_event() == 3
    ring.set_avail_idx(ring.avail_idx + 9)  # more than the queue holds
    with pytest.raises(QueueError, match="moved 9 entries"):
        q.pop_all(ring.ram)
