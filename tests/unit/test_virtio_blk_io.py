"""virtio-blk batches on plain memory and a real image file, and the helper-thread pool."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from virtio_rings import PlainRam, RingBuilder

from qumran.vmm.devices.virtio.blk import S_IOERR, S_OK, DiskImage, VirtioBlock
from qumran.vmm.devices.virtio.device import DeviceContext
from qumran.vmm.devices.virtio.ioloop import IoLoop
from qumran.vmm.devices.virtio.iopool import IoPool, Transfer, _partition

SECTORS = 2048  # a 1 MiB image


@pytest.fixture
def image(tmp_path: Path) -> Iterator[DiskImage]:
    path = tmp_path / "disk.img"
    path.write_bytes(b"".join(struct.pack("<I", i) * 128 for i in range(SECTORS)))
    img = DiskImage.open(str(path), False)
    yield img
    img.close()


class Disk:
    """A VirtioBlock whose helpers split any batch of 4 KiB or more."""

    def __init__(self, image: DiskImage, helpers: int) -> None:
        self.ram = PlainRam(4 << 20)
        self.ring = RingBuilder(self.ram, size=64)
        self.dev = VirtioBlock(image, helpers=helpers)
        self.dev._pool.split_bytes = 4096
        self.notified: list[int] = []
        ctx = DeviceContext(self.ram, [self.ring.queue()], 1 << 32, IoLoop(),
                            self.notified.append, pytest.fail, threading.RLock())  # fmt: skip
        self.dev.activate(ctx)

    def request(self, kind: int, sector: int, out: bytes = b"", read: int = 0) -> int:
        """Queue one request; the address of its status byte (data in just before it)."""
        ins = [read, 1] if read else [1]
        self.ring.add_chain([struct.pack("<IIQ", kind, 0, sector)] + ([out] if out else []), ins)
        return self.ring.next_buf - 16  # the status byte's 16-byte slot is the last buffer

    def run(self) -> None:
        self.dev.kick(0)

    def close(self) -> None:
        self.dev.close()


def _sector(i: int) -> bytes:
    return struct.pack("<I", i) * 128


@pytest.mark.parametrize("helpers", [0, 1, 3])
def test_a_batch_of_reads_and_writes_lands_where_it_should(image: DiskImage, helpers: int) -> None:
    disk = Disk(image, helpers)
    try:
        reads = [(disk.request(0, 16 * i, read=8 * 512), 16 * i) for i in range(10)]
        writes = [disk.request(1, 1000 + 3 * i, out=bytes([i]) * 1536) for i in range(10)]
        disk.run()
        assert disk.notified == [0]
        used = dict(disk.ring.used())
        assert len(used) == 20 and sorted(used.values()) == [1] * 10 + [4097] * 10
        for status, sector in reads:
            assert disk.ram.data[status] == S_OK
            data = disk.ring.read(status - 4096, 4096)
            assert data == b"".join(_sector(sector + k) for k in range(8))
        assert all(disk.ram.data[s] == S_OK for s in writes)
        with open(image.path, "rb") as f:
            f.seek(1000 * 512)
            assert f.read(30 * 512) == b"".join(bytes([i]) * 1536 for i in range(10))
        # Only the reads are shared out (writes wait for each other in the kernel).
        assert disk.dev.status()["split_batches"] == (1 if helpers else 0)
    finally:
        disk.close()


def test_a_flush_waits_for_the_writes_before_it(image: DiskImage) -> None:
    """Write, flush, read of one sector in one batch: the read sees the write."""
    disk = Disk(image, 1)
    try:
        disk.request(1, 7, out=b"W" * 512 * 8)
        flush = disk.request(4, 0)
        read = disk.request(0, 7, read=512 * 8)
        disk.run()
        assert disk.ram.data[flush] == S_OK and disk.ram.data[read] == S_OK
        assert disk.ring.read(read - 4096, 4096) == b"W" * 4096
        assert disk.dev.status()["flushes"] == 1
    finally:
        disk.close()


def test_errors_stay_with_their_request(image: DiskImage) -> None:
    disk = Disk(image, 1)
    try:
        good = disk.request(0, 0, read=8192)
        past_end = disk.request(0, SECTORS - 4, read=8192)  # 4 sectors too many
        odd = disk.request(1, 0, out=b"x" * 100)  # not whole sectors
        unknown = disk.request(77, 0)
        disk.run()
        assert disk.ram.data[good] == S_OK
        assert disk.ram.data[past_end] == S_IOERR and disk.ram.data[odd] == S_IOERR
        assert disk.ram.data[unknown] == 2  # VIRTIO_BLK_S_UNSUPP
    finally:
        disk.close()


def test_partition_cuts_on_pages_and_keeps_every_byte() -> None:
    data = bytearray(range(256)) * 1024  # 256 KiB
    mv = memoryview(data)
    views = [mv[0:1000], mv[1000:70000], mv[70000:200000], mv[200000:]]
    t = Transfer(False, views, 1 << 20, len(data))
    parts = _partition([(t, views, t.offset, t.length)], 0, 3)
    assert len(parts) == 3
    pieces = [p for part in parts for p in part]
    assert all(sum(map(len, v)) == n for _, v, _, n in pieces)
    assert [o for _, _, o, _ in pieces] == [(1 << 20) + s for s in (0, 90112, 180224)]
    assert b"".join(bytes(v) for _, vs, _, _ in pieces for v in vs) == data
    # The caller's part already holds 100 KiB of writes: it takes only what evens it out.
    parts = _partition([(t, views, t.offset, t.length)], 100 << 10, 3)
    assert [sum(n for *_, n in part) for part in parts] == [20480, 122880, 118784]
    parts = _partition([(t, views, t.offset, t.length)], 1 << 20, 3)
    assert [sum(n for *_, n in part) for part in parts] == [0, 262144]


def test_pool_moves_data_both_ways_and_reports_short_transfers(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(64 << 10))
    fd = os.open(path, os.O_RDWR)
    pool = IoPool(fd, helpers=2, split_bytes=1)
    try:
        out = memoryview(bytearray(b"abcd" * 8192))
        back = memoryview(bytearray(32768))
        w = Transfer(True, [out[:5000], out[5000:]], 4096, 32768)
        pool.run([w])
        r = Transfer(False, [back], 4096, 32768)
        beyond = Transfer(False, [memoryview(bytearray(8192))], (64 << 10) - 4096, 8192)
        pool.run([r, beyond])
        assert w.ok and r.ok and bytes(back) == bytes(out)
        assert not beyond.ok  # 4 KiB of 8 exist: an error, not a silent short read
        assert pool.split_batches == 1  # the reads; a write is never split
    finally:
        pool.close()
        os.close(fd)
