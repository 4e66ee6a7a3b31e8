"""virtio devices on plain memory, without a transport; device option parsing."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from virtio_rings import PlainRam, RingBuilder

from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.devices.virtio.backends import DiskSpec, NetSpec
from qumran.vmm.devices.virtio.blk import DiskImage
from qumran.vmm.devices.virtio.console import ConsolePort, VirtioConsole
from qumran.vmm.devices.virtio.device import DeviceContext, VirtioDevice
from qumran.vmm.devices.virtio.ioloop import IoLoop
from qumran.vmm.devices.virtio.net import VirtioNet
from qumran.vmm.devices.virtio.rng import VirtioRng
from qumran.vmm.devices.virtio.tap import NET_HDR_LEN, Tap


class Harness:
    def __init__(self, device: VirtioDevice, size: int = 8) -> None:
        self.ram = PlainRam()
        self.rings = []
        queues = []
        for i, _ in enumerate(device.queue_sizes):
            ring = RingBuilder(self.ram, size)
            ring.DESC, ring.AVAIL, ring.USED = (
                0x1000 + 0x2000 * i,
                0x1800 + 0x2000 * i,
                0x2000 + 0x2000 * i,
            )
            ring.BUFFERS = 0x20000 + 0x10000 * i
            ring.next_buf = ring.BUFFERS
            self.rings.append(ring)
            queues.append(ring.queue())
        self.used: list[int] = []
        self.broken: list[str] = []
        self.loop = IoLoop()
        self.ctx = DeviceContext(self.ram, queues, 1 << 32, self.loop, self.used.append,
                                 self.broken.append, threading.RLock())  # fmt: skip
        device.activate(self.ctx)


def test_rng_fills_the_buffer() -> None:
    dev = VirtioRng()
    h = Harness(dev)
    h.rings[0].add_chain([], [64])
    dev.kick(0)
    assert h.rings[0].used() == [(0, 64)] and h.used == [0]
    assert h.rings[0].read(h.rings[0].BUFFERS, 64) != bytes(64)


def test_console_moves_bytes_both_ways() -> None:
    out: list[bytes] = []
    port = ConsolePort(out.append)
    dev = VirtioConsole(port)
    h = Harness(dev)
    h.rings[1].add_chain([b"from the guest"])
    dev.kick(1)
    assert out == [b"from the guest"]
    port.feed(b"typed")  # no buffers yet: kept
    h.rings[0].add_chain([], [3])
    h.rings[0].add_chain([], [16])
    dev.kick(0)
    assert [n for _, n in h.rings[0].used()] == [3, 2]


def test_net_moves_frames_through_a_tap_like_socket_pair() -> None:
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    dev = VirtioNet(Tap("fake", ours.fileno()), bytes.fromhex("525400123456"))
    assert dev.read_config(0, 6) == 0x563412005452
    h = Harness(dev)
    try:
        frame = bytes(NET_HDR_LEN) + b"\xff" * 6 + b"frame-from-guest"
        h.rings[1].add_chain([frame[:NET_HDR_LEN], frame[NET_HDR_LEN:]])
        dev.kick(1)
        assert theirs.recv(100) == frame
        theirs.send(bytes(NET_HDR_LEN) + b"frame-to-guest")
        h.rings[0].add_chain([], [1526])
        dev.kick(0)
        ((_, n),) = h.rings[0].used()
        data = h.rings[0].read(h.rings[0].BUFFERS, n)
        assert data[NET_HDR_LEN:] == b"frame-to-guest" and data[10] == 1  # num_buffers
    finally:
        dev.reset()
        h.loop.stop()
        theirs.close()
        ours.close()


def test_hostile_chain_breaks_the_device_not_the_vmm() -> None:
    out: list[bytes] = []
    dev = VirtioConsole(ConsolePort(out.append))
    h = Harness(dev)
    h.rings[1].set_desc(0, 1 << 40, 16, 0)
    h.rings[1].publish(0)
    dev.kick(1)
    assert h.broken and "not guest RAM" in h.broken[0] and dev.ctx is None
    dev.kick(1)  # ignored from now on
    assert out == []


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "no image path"), ("a.img,rw", "unknown option")],
)
def test_bad_disk_specs(text: str, message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        DiskSpec.parse(text)


def test_disk_specs() -> None:
    assert DiskSpec.parse("/x.img,ro") == DiskSpec("/x.img", True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tap=t0,mac=52:54:00:zz:00:01", "bad MAC"),
        ("tap=t0,mac=01:00:5e:00:00:01", "multicast"),
        ("tap=t0,fd=3", "exactly one"),
        ("mac=52:54:00:00:00:01", "exactly one"),
        ("tap=a-name-that-is-too-long", "1 to 15"),
        ("tap=t0,speed=10", "expected"),
    ],
)
def test_bad_net_specs(text: str, message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        NetSpec.parse(text)


def test_disk_image_errors(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="does not exist"):
        DiskImage.open(str(tmp_path / "nope.img"), False)
    small = tmp_path / "small.img"
    small.write_bytes(b"x")
    with pytest.raises(DeviceError, match="smaller than one"):
        DiskImage.open(str(small), False)
    img = tmp_path / "ok.img"
    img.write_bytes(bytes(4096))
    first = DiskImage.open(str(img), False)
    with pytest.raises(DeviceError, match="in use by another VM"):
        DiskImage.open(str(img), False)
    first.close()
    if os.geteuid() != 0:
        img.chmod(0o444)
        with pytest.raises(DeviceError, match="not writable"):
            DiskImage.open(str(img), False)
