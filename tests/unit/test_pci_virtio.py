"""The PCI host and the virtio-pci transport, driven like a guest driver would, on plain memory."""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from virtio_rings import PlainRam, RingBuilder

from qumran.vmm.devices import NullIrqLine
from qumran.vmm.devices.pci import virtio_pci as vp
from qumran.vmm.devices.pci.host import PciHost
from qumran.vmm.devices.virtio.blk import DiskImage, VirtioBlock
from qumran.vmm.devices.virtio.ioloop import IoLoop

BAR = 0xC000_8000


class Msi:
    def __init__(self) -> None:
        self.routes: dict[int, tuple[int, int]] = {}
        self.fired: list[int] = []
        self.event = threading.Event()

    def route(self, index: int, address: int, data: int) -> None:
        self.routes[index] = (address, data)

    def trigger(self, index: int) -> None:
        self.fired.append(index)
        self.event.set()

    def eventfd(self, index: int) -> int | None:
        return None


class Doorbells:
    def __init__(self) -> None:
        self.bound: set[tuple[int, int]] = set()

    def bind(self, addr: int, length: int, fd: int) -> None:
        self.bound.add((addr, fd))

    def unbind(self, addr: int, length: int, fd: int) -> None:
        self.bound.discard((addr, fd))


class Rig:
    def __init__(self, tmp: Path, readonly: bool = False) -> None:
        img = tmp / "disk.img"
        img.write_bytes(bytes(range(256)) * 2 * 64)  # 64 sectors
        self.image = DiskImage.open(str(img), readonly)
        self.ram = PlainRam()
        self.loop = IoLoop()
        self.msi, self.doorbells = Msi(), Doorbells()
        self.dev = vp.VirtioPciDevice(
            VirtioBlock(self.image), BAR, self.ram, self.loop, self.msi, NullIrqLine(),
            self.doorbells,
        )  # fmt: skip
        self.host = PciHost()
        assert self.host.add(self.dev) == 1
        self.loop.start()

    def cfg(self, reg: int, size: int = 4, value: int | None = None) -> int:
        self.host.pio_write(0, 4, 0x8000_0000 | 1 << 11 | (reg & 0xFC))
        if value is None:
            return self.host.pio_read(4 + (reg & 3), size)
        self.host.pio_write(4 + (reg & 3), size, value)
        return 0

    def rd(self, offset: int, size: int) -> int:
        return int.from_bytes(self.host.mmio_read(BAR + offset, size), "little")

    def wr(self, offset: int, size: int, value: int) -> None:
        self.host.mmio_write(BAR + offset, value.to_bytes(size, "little"))

    def close(self) -> None:
        self.loop.stop()
        self.dev.close()
        self.image.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def _bring_up(rig: Rig, ring: RingBuilder) -> None:
    rig.cfg(0x04, 2, 0x6)  # memory decode + bus master
    rig.wr(vp.STATUS, 1, 0)
    rig.wr(vp.STATUS, 1, vp.ACKNOWLEDGE | vp.DRIVER)
    rig.wr(vp.DFSELECT, 4, 1)
    assert rig.rd(vp.DF, 4) & 1  # VIRTIO_F_VERSION_1
    rig.wr(vp.GFSELECT, 4, 1)
    rig.wr(vp.GF, 4, 1)
    rig.wr(vp.STATUS, 1, vp.ACKNOWLEDGE | vp.DRIVER | vp.FEATURES_OK)
    assert rig.rd(vp.STATUS, 1) & vp.FEATURES_OK
    cap = rig.dev._msix_cap
    rig.cfg(cap + 2, 2, 0x8000)  # MSI-X enable
    rig.wr(vp.MSIX_TABLE + 16 * 1, 4, 0xFEE0_0000)
    rig.wr(vp.MSIX_TABLE + 16 * 1 + 8, 4, 0x41)
    rig.wr(vp.MSIX_TABLE + 16 * 1 + 12, 4, 0)  # unmask vector 1
    rig.wr(vp.Q_SELECT, 2, 0)
    rig.wr(vp.Q_SIZE, 2, ring.size)
    rig.wr(vp.Q_MSIX_VECTOR, 2, 1)
    for off, addr in ((vp.Q_DESC, ring.DESC), (vp.Q_DRIVER, ring.AVAIL), (vp.Q_DEVICE, ring.USED)):
        rig.wr(off, 4, addr)
        rig.wr(off + 4, 4, 0)
    rig.wr(vp.Q_ENABLE, 2, 1)
    rig.wr(vp.STATUS, 1, 0xF)


def test_config_space_identifies_a_modern_virtio_block_device(rig: Rig) -> None:
    assert rig.cfg(0x00) == (0x1042 << 16) | 0x1AF4
    assert rig.cfg(0x08) >> 8 == 0x018000  # mass storage
    assert rig.cfg(0x2C) == (0x40 << 16) | 0x1AF4
    # Capability list: MSI-X, then the four virtio structures.
    seen, ptr = [], rig.cfg(0x34, 1)
    while ptr:
        seen.append((rig.cfg(ptr, 1), rig.cfg(ptr + 3, 1)))
        ptr = rig.cfg(ptr + 1, 1)
    assert seen[0][0] == 0x11 and {t for i, t in seen[1:] if i == 9} == {1, 2, 3, 4}
    # BAR sizing (PCI 3.0, 6.2.5.1).
    rig.cfg(0x10, 4, 0xFFFF_FFFF)
    assert rig.cfg(0x10) == (~(vp.BAR_SIZE - 1)) & 0xFFFF_FFFF
    rig.cfg(0x10, 4, BAR)
    assert rig.cfg(0x10) == BAR
    assert rig.cfg(0x14) == 0  # no second BAR
    # Other slots and functions are absent.
    rig.host.pio_write(0, 4, 0x8000_0000 | 5 << 11)
    assert rig.host.pio_read(4, 4) == 0xFFFF_FFFF


def test_bar_is_dark_until_memory_decoding_is_on(rig: Rig) -> None:
    assert rig.host.mmio_read(BAR + vp.NUM_QUEUES, 2) == b"\xff\xff"
    rig.cfg(0x04, 2, 0x2)
    assert rig.rd(vp.NUM_QUEUES, 2) == 1


def test_a_read_request_moves_disk_data_into_guest_memory_with_msix(rig: Rig) -> None:
    ring = RingBuilder(rig.ram, size=8)
    _bring_up(rig, ring)
    assert rig.doorbells.bound == {(BAR + vp.NOTIFY, rig.dev._kick_fds[0])}
    assert rig.msi.routes[1] == (0xFEE0_0000, 0x41)
    head = ring.add_chain([struct.pack("<IIQ", 0, 0, 1)], [512, 1])
    rig.wr(vp.NOTIFY, 2, 0)  # a kick that arrives as an MMIO exit
    assert rig.msi.event.wait(5)
    ((used_head, written),) = ring.used()
    assert (used_head, written) == (head, 513)
    data_addr = ring.BUFFERS + 16
    assert ring.read(data_addr, 512) == bytes(range(256)) * 2
    assert ring.read(data_addr + 512, 1) == b"\0"  # VIRTIO_BLK_S_OK


def test_any_descriptor_layout_gives_the_same_request(rig: Rig) -> None:
    """2.7.3 Message Framing: the header split over two buffers, data and status in one."""
    ring = RingBuilder(rig.ram, size=8)
    _bring_up(rig, ring)
    header = struct.pack("<IIQ", 0, 0, 2)
    head = ring.add_chain([header[:5], header[5:]], [512 + 1])
    rig.wr(vp.NOTIFY, 2, 0)
    assert rig.msi.event.wait(5)
    assert ring.used() == [(head, 513)]
    data_addr = ring.BUFFERS + 32
    assert ring.read(data_addr, 513) == bytes(range(256)) * 2 + b"\0"


def test_write_and_flush_reach_the_file(rig: Rig, tmp_path: Path) -> None:
    ring = RingBuilder(rig.ram, size=8)
    _bring_up(rig, ring)
    ring.add_chain([struct.pack("<IIQ", 1, 0, 3), b"Q" * 1024], [1])
    ring.add_chain([struct.pack("<IIQ", 4, 0, 0)], [1])
    rig.wr(vp.NOTIFY, 2, 0)
    deadline = time.monotonic() + 5
    while len(ring.used()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [n for _, n in ring.used()] == [1, 1]
    with open(tmp_path / "disk.img", "rb") as f:
        f.seek(3 * 512)
        assert f.read(1024) == b"Q" * 1024
    assert rig.dev.device.status()["flushes"] == 1


def test_hostile_queue_address_sets_needs_reset(rig: Rig) -> None:
    ring = RingBuilder(rig.ram, size=8)
    rig.cfg(0x04, 2, 0x6)
    rig.wr(vp.STATUS, 1, 3)
    rig.wr(vp.GFSELECT, 4, 1)
    rig.wr(vp.GF, 4, 1)
    rig.wr(vp.STATUS, 1, 0xB)
    rig.wr(vp.Q_DESC, 4, 0)
    rig.wr(vp.Q_DESC + 4, 4, 0x10)  # 64 GiB: far outside the 1 MiB of RAM
    rig.wr(vp.Q_DRIVER, 4, ring.AVAIL)
    rig.wr(vp.Q_DEVICE, 4, ring.USED)
    rig.wr(vp.Q_ENABLE, 2, 1)
    assert rig.rd(vp.STATUS, 1) & vp.NEEDS_RESET
    rig.wr(vp.STATUS, 1, 0)  # the driver resets: the device is usable again
    assert rig.rd(vp.STATUS, 1) == 0


def test_hostile_request_breaks_only_the_device(rig: Rig) -> None:
    ring = RingBuilder(rig.ram, size=8)
    _bring_up(rig, ring)
    ring.add_chain([b"short"], [])  # no header, no status byte
    rig.wr(vp.NOTIFY, 2, 0)
    deadline = time.monotonic() + 5
    while not rig.rd(vp.STATUS, 1) & vp.NEEDS_RESET and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rig.rd(vp.STATUS, 1) & vp.NEEDS_RESET
    assert ring.used() == []


def test_read_past_the_end_is_an_io_error(rig: Rig) -> None:
    ring = RingBuilder(rig.ram, size=8)
    _bring_up(rig, ring)
    ring.add_chain([struct.pack("<IIQ", 0, 0, 63)], [1024, 1])
    rig.wr(vp.NOTIFY, 2, 0)
    assert rig.msi.event.wait(5)
    assert ring.read(ring.BUFFERS + 16 + 1024, 1) == b"\x01"


def test_read_only_image_refuses_writes(tmp_path: Path) -> None:
    r = Rig(tmp_path, readonly=True)
    try:
        ring = RingBuilder(r.ram, size=8)
        _bring_up(r, ring)
        ring.add_chain([struct.pack("<IIQ", 1, 0, 0), b"Z" * 512], [1])
        r.wr(vp.NOTIFY, 2, 0)
        assert r.msi.event.wait(5)
        assert ring.read(ring.BUFFERS + 16 + 512, 1) == b"\x01"
        assert (tmp_path / "disk.img").read_bytes()[:1] == b"\0"
    finally:
        r.close()


def test_masked_vector_is_pending_until_unmasked(rig: Rig) -> None:
    ring = RingBuilder(rig.ram, size=8)
    _bring_up(rig, ring)
    rig.wr(vp.MSIX_TABLE + 16 + 12, 4, 1)  # mask vector 1
    ring.add_chain([struct.pack("<IIQ", 8, 0, 0)], [20, 1])  # GET_ID
    rig.wr(vp.NOTIFY, 2, 0)
    deadline = time.monotonic() + 5
    while not ring.used() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rig.msi.fired == [] and rig.rd(vp.MSIX_PBA, 8) == 0b10
    rig.wr(vp.MSIX_TABLE + 16 + 12, 4, 0)
    assert rig.msi.fired == [1] and rig.rd(vp.MSIX_PBA, 8) == 0
    assert ring.read(ring.BUFFERS + 16, 8) == b"disk.img"


def test_reset_port_0xcf9() -> None:
    hits: list[int] = []
    host = PciHost(on_reset=lambda: hits.append(1))
    host.pio_write(1, 1, 0x06)
    assert hits == [1]


def test_kick_fds_are_closed(tmp_path: Path) -> None:
    r = Rig(tmp_path)
    fds = list(r.dev._kick_fds)
    r.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_random_guest_accesses_never_raise(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever the guest writes where, the VMM answers and keeps going."""
    import random

    rnd = random.Random(3)
    ring = RingBuilder(rig.ram, size=8)
    _bring_up(rig, ring)
    for _ in range(20000):
        size = rnd.choice((1, 2, 4, 8))
        value = rnd.getrandbits(8 * size)
        where = rnd.random()
        if where < 0.3:
            reg = rnd.randrange(0, 256)
            rig.cfg(reg, min(size, 4), value if rnd.random() < 0.5 else None)
        elif where < 0.6:
            offset = rnd.choice((vp.COMMON, vp.ISR, vp.DEVICE_CFG, vp.MSIX_TABLE, vp.MSIX_PBA))
            offset += rnd.randrange(0, 0x40)
            if rnd.random() < 0.5:
                rig.wr(offset, size, value)
            else:
                rig.rd(offset, size)
        else:
            rig.ram.data[ring.DESC : ring.DESC + 0x200] = rnd.randbytes(0x200)
            rig.wr(vp.NOTIFY, 2, 0)
        rig.cfg(0x04, 2, 0x6)  # keep the BAR decoding so the accesses land
        rig.cfg(0x10, 4, BAR)
    time.sleep(0.2)  # let the I/O loop chew on the last kicks
    crashes = [r for r in caplog.records if r.levelname == "ERROR"]  # IoLoop caught a bug
    assert not crashes, crashes[0].exc_text
