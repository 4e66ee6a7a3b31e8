"""vhost-net without /dev/vhost-net: its ABI, its option, and the transport's side of a
device whose rings the kernel serves (kick eventfds handed over, interrupt paths)."""

from __future__ import annotations

import ctypes
import os
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from virtio_rings import PlainRam, RingBuilder

from qumran.vmm.devices import NullIrqLine
from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.devices.pci import virtio_pci as vp
from qumran.vmm.devices.pci.host import PciHost
from qumran.vmm.devices.virtio import vhost
from qumran.vmm.devices.virtio.backends import DeviceSpecs, NetSpec, open_backends
from qumran.vmm.devices.virtio.device import DeviceContext, VirtioDevice
from qumran.vmm.devices.virtio.ioloop import IoLoop

BAR = 0xC000_8000


def test_ioctl_numbers_match_the_kernel_headers() -> None:
    # Values of the vhost.h macros as a C compiler computes them on x86-64.
    assert vhost.VHOST_GET_FEATURES == 0x8008AF00
    assert vhost.VHOST_SET_FEATURES == 0x4008AF00
    assert vhost.VHOST_SET_OWNER == 0xAF01
    assert vhost.VHOST_SET_MEM_TABLE == 0x4008AF03
    assert vhost.VHOST_SET_VRING_NUM == 0x4008AF10
    assert vhost.VHOST_SET_VRING_ADDR == 0x4028AF11
    assert vhost.VHOST_SET_VRING_BASE == 0x4008AF12
    assert vhost.VHOST_GET_VRING_BASE == 0xC008AF12
    assert vhost.VHOST_SET_VRING_KICK == 0x4008AF20
    assert vhost.VHOST_SET_VRING_CALL == 0x4008AF21
    assert vhost.VHOST_NET_SET_BACKEND == 0x4008AF30


def test_memory_table_layout() -> None:
    regions = ((0, 0xC000_0000, 0x7F00_0000_0000), (1 << 32, 1 << 30, 0x7F00_C000_0000))
    raw = bytes(vhost.memory_table(regions))
    assert len(raw) == 8 + 2 * 32
    assert struct.unpack_from("<II", raw) == (2, 0)
    assert struct.unpack_from("<4Q", raw, 8) == (0, 0xC000_0000, 0x7F00_0000_0000, 0)
    assert struct.unpack_from("<4Q", raw, 40) == (1 << 32, 1 << 30, 0x7F00_C000_0000, 0)
    assert vhost.host_address(regions, (1 << 32) + 0x10, 16) == 0x7F00_C000_0010
    with pytest.raises(DeviceError, match="not RAM"):
        vhost.host_address(regions, 0xBFFF_FFF0, 32)  # straddles the end of a region


def test_features_the_kernel_lacks_are_not_offered() -> None:
    net = vhost.VhostNet.__new__(vhost.VhostNet)
    net.features = (1 << 32) | (1 << 28)  # VERSION_1 and INDIRECT_DESC only
    offered = (1 << 32) | (1 << 29) | (1 << 28) | (1 << 15) | (1 << 11) | 1
    # EVENT_IDX and MRG_RXBUF go; TSO4 and CSUM stay (the TAP handles them).
    assert net.offerable(offered) == (1 << 32) | (1 << 28) | (1 << 11) | 1


@pytest.mark.parametrize(
    ("text", "vhost_on"),
    [("tap=t0", False), ("tap=t0,vhost=off", False), ("tap=t0,vhost=on", True),
     ("fd=3,mac=52:54:00:00:00:01,vhost=on", True)],
)  # fmt: skip
def test_vhost_option(text: str, vhost_on: bool) -> None:
    assert NetSpec.parse(text).vhost is vhost_on


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tap=t0,vhost=maybe", "vhost must be on or off, not 'maybe'"),
        ("tap=t0,vhost=", "vhost must be on or off"),
        ("tap=t0,vhost=on,vhost=off", "expected"),
        ("tap=t0,vhost", "expected"),
    ],
)
def test_bad_vhost_option(text: str, message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        NetSpec.parse(text)


def test_vhost_on_without_the_device_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    missing = f"{tmp_path}/vhost-net"
    monkeypatch.setattr(vhost, "VHOST_NET_DEVICE", missing)
    specs = DeviceSpecs(nets=(NetSpec(tap="qt0", vhost=True),))
    with pytest.raises(DeviceError) as info:
        open_backends(specs)
    assert str(info.value) == (
        f"vhost=on: cannot open {missing}: No such file or directory; "
        "is the vhost_net module loaded? (or use vhost=off)"
    )


# --- the transport and a device whose rings the kernel serves ------------------------------


class KernelDevice(VirtioDevice):
    """Stands in for vhost: remembers what the transport handed over."""

    device_id = 1
    name = "kernel-rings"
    rings_in_kernel = True

    def __init__(self) -> None:
        super().__init__((8,), 0, b"")
        self.processed: list[int] = []
        self.changes = 0

    def process(self, ctx: DeviceContext, index: int) -> None:
        self.processed.append(index)

    def vectors_changed(self) -> None:
        self.changes += 1


class Msi:
    def __init__(self) -> None:
        self.fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
        self.fired: list[int] = []

    def route(self, index: int, address: int, data: int) -> None:
        pass

    def trigger(self, index: int) -> None:
        self.fired.append(index)

    def eventfd(self, index: int) -> int | None:
        return self.fds[index]


class Doorbells:
    def bind(self, addr: int, length: int, fd: int) -> None:
        pass

    def unbind(self, addr: int, length: int, fd: int) -> None:
        pass


class Rig:
    def __init__(self) -> None:
        self.ram, self.loop, self.msi = PlainRam(), IoLoop(), Msi()
        self.device = KernelDevice()
        regions = ((0, 1 << 20, 0x7000_0000),)
        self.dev = vp.VirtioPciDevice(
            self.device, BAR, self.ram, self.loop, self.msi, NullIrqLine(), Doorbells(), regions
        )
        self.host = PciHost()
        self.host.add(self.dev)
        self.loop.start()

    def cfg(self, reg: int, size: int, value: int) -> None:
        self.host.pio_write(0, 4, 0x8000_0000 | 1 << 11 | (reg & 0xFC))
        self.host.pio_write(4 + (reg & 3), size, value)

    def wr(self, offset: int, size: int, value: int) -> None:
        self.host.mmio_write(BAR + offset, value.to_bytes(size, "little"))

    def bring_up(self) -> None:
        ring = RingBuilder(self.ram, 8)
        self.cfg(0x04, 2, 0x6)
        self.wr(vp.STATUS, 1, vp.ACKNOWLEDGE | vp.DRIVER)
        self.wr(vp.GFSELECT, 4, 1)
        self.wr(vp.GF, 4, 1)
        self.wr(vp.STATUS, 1, vp.ACKNOWLEDGE | vp.DRIVER | vp.FEATURES_OK)
        self.cfg(self.dev._msix_cap + 2, 2, 0x8000)  # MSI-X enable
        self.wr(vp.MSIX_TABLE + 16 + 12, 4, 0)  # unmask vector 1
        self.wr(vp.Q_SELECT, 2, 0)
        self.wr(vp.Q_MSIX_VECTOR, 2, 1)
        for off, addr in ((vp.Q_DESC, ring.DESC), (vp.Q_DRIVER, ring.AVAIL),
                          (vp.Q_DEVICE, ring.USED)):  # fmt: skip
            self.wr(off, 4, addr)
        self.wr(vp.Q_ENABLE, 2, 1)
        self.wr(vp.STATUS, 1, 0xF)

    def close(self) -> None:
        self.loop.stop()
        self.dev.close()
        for fd in self.msi.fds:
            os.close(fd)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def _settle() -> None:
    time.sleep(0.05)  # the I/O loop thread gets its turn


def test_the_kernel_gets_the_kick_eventfds_and_the_transport_lets_go(rig: Rig) -> None:
    rig.bring_up()
    ctx = rig.device.ctx
    assert ctx is not None and ctx.kernel is not None
    assert ctx.kernel.regions == ((0, 1 << 20, 0x7000_0000),)
    kick = ctx.kernel.kick_fds[0]
    rig.wr(vp.NOTIFY, 2, 0)  # a doorbell write that arrives as an MMIO exit
    _settle()
    assert rig.device.processed == [] and rig.dev.counters["kicks"] == 0
    assert os.eventfd_read(kick) == 1  # still there, for the kernel to see
    rig.wr(vp.STATUS, 1, 0)  # reset: the transport reads the kicks again
    rig.wr(vp.NOTIFY, 2, 0)
    _settle()
    assert rig.dev.counters["kicks"] == 1


def test_interrupts_go_direct_only_while_the_vector_is_unmasked(rig: Rig) -> None:
    rig.bring_up()
    ctx = rig.device.ctx
    assert ctx is not None and ctx.kernel is not None
    assert ctx.kernel.irqfd(0) == rig.msi.fds[1]
    changes = rig.device.changes
    rig.wr(vp.MSIX_TABLE + 16 + 12, 4, 1)  # the driver masks vector 1
    assert rig.device.changes == changes + 1  # the device hears of it ...
    assert ctx.kernel.irqfd(0) is None  # ... and must relay
    ctx.kernel.interrupt(0)
    assert rig.msi.fired == [] and rig.dev.msix.pending == 1 << 1
    rig.wr(vp.MSIX_TABLE + 16 + 12, 4, 0)  # unmasked: the pending interrupt is delivered
    assert rig.msi.fired == [1] and ctx.kernel.irqfd(0) == rig.msi.fds[1]
    rig.cfg(rig.dev._msix_cap + 2, 2, 0)  # MSI-X off: INTx, through the transport
    assert ctx.kernel.irqfd(0) is None
    ctx.kernel.interrupt(0)
    assert rig.dev.isr & vp.ISR_QUEUE


def test_relay_eventfd_becomes_a_transport_interrupt() -> None:
    fired: list[int] = []
    done = threading.Event()
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        os.eventfd_write(fd, 3)
        vhost._relay(fd, lambda i: (fired.append(i), done.set()), 1)
        vhost._relay(fd, fired.append, 1)  # nothing left: no interrupt
        assert fired == [1] and done.is_set()
    finally:
        os.close(fd)


def test_abi_sizes() -> None:
    assert ctypes.sizeof(vhost.vhost_vring_addr) == 40
    assert vhost.vhost_vring_addr.avail_user_addr.offset == 24  # desc, used, then avail
