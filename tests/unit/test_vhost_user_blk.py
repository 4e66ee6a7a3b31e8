"""vhost-user-blk against a real qemu-storage-daemon, without a guest: the test plays the
driver on qumran-vmm's own PCI transport, over guest RAM in a memfd, so every byte goes
the way a guest's would (rings in the memfd, kicks by eventfd, completions by the irqfd)."""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_vhost import Doorbells, Msi
from virtio_rings import RingBuilder

from qumran.vmm.devices import NullIrqLine
from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.devices.pci import virtio_pci as vp
from qumran.vmm.devices.pci.host import PciHost
from qumran.vmm.devices.virtio import vhost_user as vu
from qumran.vmm.devices.virtio.backends import DeviceSpecs, DiskSpec, open_backends
from qumran.vmm.devices.virtio.ioloop import IoLoop
from qumran.vmm.devices.virtio.vhost_user_blk import VhostUserBackend, VhostUserBlock
from qumran.vmm.memory import GuestMemory
from storage_daemon import QSD, StorageDaemon

pytestmark = pytest.mark.skipif(QSD is None, reason="needs qemu-storage-daemon (qemu-utils)")
BAR = 0xC000_8000
T_IN, T_OUT, T_FLUSH = 0, 1, 4
DISK = 64 << 20


@pytest.fixture
def qsd(tmp_path: Path) -> Iterator[StorageDaemon]:
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(DISK)], check=True)
    daemon = StorageDaemon(image, tmp_path / "vub.sock")
    daemon.start()
    yield daemon
    daemon.stop()


class MemfdRam:
    """GuestMemory seen the way RingBuilder wants (``data``) and the transport wants (view)."""

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self.data = memory.view(0, 1 << 20)

    def view(self, gpa: int, length: int) -> memoryview:
        return self.memory.view(gpa, length)


class Driver:
    """The guest's side: brings the device up, issues requests, waits for completions."""

    def __init__(self, backend: VhostUserBackend) -> None:
        self.memory = GuestMemory(4 << 20, shared=True)
        self.ram = MemfdRam(self.memory)
        self.loop, self.msi = IoLoop(), Msi()
        self.device = VhostUserBlock(backend)
        self.dev = vp.VirtioPciDevice(
            self.device, BAR, self.ram, self.loop, self.msi, NullIrqLine(), Doorbells(),
            self.memory.regions(), (self.memory.fd, self.memory.file_regions()),
        )  # fmt: skip
        self.host = PciHost()
        self.host.add(self.dev)
        self.loop.start()
        self.ring = RingBuilder(self.ram, 16)  # type: ignore[arg-type]

    def cfg(self, reg: int, size: int, value: int) -> None:
        self.host.pio_write(0, 4, 0x8000_0000 | 1 << 11 | (reg & 0xFC))
        self.host.pio_write(4 + (reg & 3), size, value)

    def wr(self, offset: int, size: int, value: int) -> None:
        self.host.mmio_write(BAR + offset, value.to_bytes(size, "little"))

    def rd(self, offset: int, size: int) -> int:
        return int.from_bytes(self.host.mmio_read(BAR + offset, size), "little")

    def bring_up(self) -> None:
        self.cfg(0x04, 2, 0x6)
        self.wr(vp.STATUS, 1, vp.ACKNOWLEDGE | vp.DRIVER)
        self.wr(vp.GFSELECT, 4, 0)
        self.wr(vp.GF, 4, (1 << 9) | (1 << 6))  # FLUSH, BLK_SIZE
        self.wr(vp.GFSELECT, 4, 1)
        self.wr(vp.GF, 4, 1)  # VERSION_1
        self.wr(vp.STATUS, 1, vp.ACKNOWLEDGE | vp.DRIVER | vp.FEATURES_OK)
        assert self.rd(vp.STATUS, 1) & vp.FEATURES_OK
        self.cfg(self.dev._msix_cap + 2, 2, 0x8000)  # MSI-X on
        self.wr(vp.MSIX_TABLE + 16 + 12, 4, 0)  # vector 1 unmasked: the irqfd path
        self.wr(vp.Q_SELECT, 2, 0)
        self.wr(vp.Q_SIZE, 2, 16)
        self.wr(vp.Q_MSIX_VECTOR, 2, 1)
        for off, addr in ((vp.Q_DESC, self.ring.DESC), (vp.Q_DRIVER, self.ring.AVAIL),
                          (vp.Q_DEVICE, self.ring.USED)):  # fmt: skip
            self.wr(off, 4, addr)
        self.wr(vp.Q_ENABLE, 2, 1)
        self.wr(vp.STATUS, 1, 0xF)

    def submit(self, kind: int, sector: int, data: bytes = b"", read: int = 0) -> int:
        header = struct.pack("<IIQ", kind, 0, sector)
        out = [header, data] if data else [header]
        head = self.ring.add_chain(out, [read, 1] if read else [1])
        self.wr(vp.NOTIFY, 2, 0)  # the doorbell: the kick eventfd
        return head

    def wait_used(self, count: int, timeout: float = 10.0) -> list[tuple[int, int]]:
        """Block on the queue's irqfd until ``count`` requests are complete."""
        fd = self.msi.fds[1]
        while len(self.ring.used()) < count:
            ready, _, _ = select.select([fd], [], [], timeout)
            assert ready, f"no completion within {timeout} s: {self.ring.used()}"
            os.eventfd_read(fd)
        return self.ring.used()

    def status_byte(self, head: int) -> int:
        """The status byte of the chain at ``head`` (its last descriptor)."""
        i = head
        while True:
            addr, _length, flags, nxt = struct.unpack_from("<QIHH", self.ram.data, 0x1000 + 16 * i)
            if not flags & 1:
                return self.ram.data[addr]
            i = nxt

    def close(self) -> None:
        self.loop.stop()
        self.dev.close()
        self.ram.data.release()
        self.memory.close()
        for fd in self.msi.fds:
            os.close(fd)


@pytest.fixture
def driver(qsd: StorageDaemon) -> Iterator[Driver]:
    backend = VhostUserBackend.open(str(qsd.sock))
    d = Driver(backend)
    yield d
    d.close()
    backend.close()


def read_back(image: Path, offset: int, length: int, tmp: Path) -> bytes:
    raw = tmp / "back.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    with open(raw, "rb") as f:
        f.seek(offset)
        return f.read(length)


def test_the_config_space_comes_from_the_back_end(qsd: StorageDaemon) -> None:
    backend = VhostUserBackend.open(str(qsd.sock))
    try:
        dev = VhostUserBlock(backend)
        assert dev.read_config(0, 8) == DISK // 512  # capacity in sectors
        assert dev.device_features & (1 << 32)  # VERSION_1
        assert not dev.device_features & vu.F_PROTOCOL_FEATURES  # never shown to the guest
        assert not dev.device_features & (1 << 11)  # CONFIG_WCE: not passed on
        assert dev.status()["capacity"] == DISK
    finally:
        backend.close()


def test_a_queue_per_back_end_queue(tmp_path: Path) -> None:
    image = tmp_path / "mq.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M"], check=True)
    daemon = StorageDaemon(image, tmp_path / "mq.sock", queues=3)
    daemon.start()
    try:
        backend = VhostUserBackend.open(str(daemon.sock))
        dev = VhostUserBlock(backend)
        assert dev.queue_sizes == (256, 256, 256)
        assert dev.read_config(34, 2) == 3 and dev.device_features & (1 << 12)  # MQ
        backend.close()
    finally:
        daemon.stop()


def test_a_write_lands_in_the_qcow2_and_reads_back(
    driver: Driver, qsd: StorageDaemon, tmp_path: Path
) -> None:
    driver.bring_up()
    data = bytes(range(256)) * 16  # 4 KiB
    w = driver.submit(T_OUT, 8, data)
    driver.wait_used(1)
    f = driver.submit(T_FLUSH, 0)
    driver.wait_used(2)
    assert (driver.status_byte(w), driver.status_byte(f)) == (0, 0)
    r = driver.submit(T_IN, 8, read=4096)
    used = driver.wait_used(3)
    assert used[2] == (r, 4097)
    assert driver.status_byte(r) == 0
    addr = struct.unpack_from("<Q", driver.ram.data, 0x1000 + 16 * ((r + 1) % 16))[0]
    assert bytes(driver.ram.data[addr : addr + 4096]) == data
    qsd.stop()
    check = subprocess.run(["qemu-img", "check", str(qsd.image)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert read_back(qsd.image, 8 * 512, 4096, tmp_path) == data


def test_requests_wait_while_the_back_end_restarts(driver: Driver, qsd: StorageDaemon) -> None:
    driver.bring_up()
    driver.submit(T_OUT, 0, b"\x11" * 512)
    driver.wait_used(1)  # 5.2.6.4: a flush covers only the writes already completed
    driver.submit(T_FLUSH, 0)  # what a crash may lose is what was never flushed (qcow2's
    driver.wait_used(2)  # cluster tables live in the daemon until then)
    qsd.stop(kill=True)  # a crash: no goodbye on the socket
    head = driver.submit(T_OUT, 1, b"\x22" * 512)  # queued while nobody serves the ring
    qsd.start()
    used = driver.wait_used(3)
    assert used[2][0] == head and driver.status_byte(head) == 0
    r = driver.submit(T_IN, 0, read=1024)
    driver.wait_used(4)
    addr = struct.unpack_from("<Q", driver.ram.data, 0x1000 + 16 * ((r + 1) % 16))[0]
    assert bytes(driver.ram.data[addr : addr + 1024]) == b"\x11" * 512 + b"\x22" * 512
    assert driver.device.status()["reconnects"] == 1


def test_a_missing_socket_is_one_line(tmp_path: Path) -> None:
    sock = tmp_path / "nobody.sock"
    with pytest.raises(DeviceError) as info:
        open_backends(DeviceSpecs(disks=(DiskSpec.parse(f"vhost-user={sock}"),)))
    assert str(info.value) == (
        f"--disk vhost-user={sock}: cannot connect to {sock}: No such file or directory"
    )


def test_disk_option() -> None:
    assert DiskSpec.parse("vhost-user=/run/x.sock") == DiskSpec("/run/x.sock", vhost_user=True)
    with pytest.raises(DeviceError, match="no socket path"):
        DiskSpec.parse("vhost-user=")


class ScriptedBackEnd:
    """A vhost-user back end that answers GET_FEATURES and GET_PROTOCOL_FEATURES with the
    given values and acknowledges everything else: for the refusals."""

    def __init__(self, path: Path, features: int, protocol: int) -> None:
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(1)
        self.features, self.protocol = features, protocol
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            while header := conn.recv(12):
                request, _flags, size = struct.unpack("<III", header)
                if size:
                    conn.recv(size)
                value = {vu.GET_FEATURES: self.features,
                         vu.GET_PROTOCOL_FEATURES: self.protocol}.get(request)  # fmt: skip
                if value is not None:
                    conn.sendall(struct.pack("<IIIQ", request, 1 | vu.FLAG_REPLY, 8, value))

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize(
    ("features", "protocol", "missing"),
    [
        (vu.F_PROTOCOL_FEATURES, vu.PROTOCOL_CONFIG, "VIRTIO_F_VERSION_1"),
        (1 << 32, 0, "VHOST_USER_F_PROTOCOL_FEATURES"),
        ((1 << 32) | vu.F_PROTOCOL_FEATURES, vu.PROTOCOL_REPLY_ACK, "the CONFIG protocol feature"),
    ],
)
def test_a_back_end_without_what_virtio_blk_needs_is_refused(
    tmp_path: Path, features: int, protocol: int, missing: str
) -> None:
    sock = tmp_path / "b.sock"
    back = ScriptedBackEnd(sock, features, protocol)
    try:
        with pytest.raises(DeviceError) as info:
            open_backends(DeviceSpecs(disks=(DiskSpec.parse(f"vhost-user={sock}"),)))
        message = str(info.value)
        assert message.startswith(f"--disk vhost-user={sock}: vhost-user back end {sock} does")
        assert missing in message
    finally:
        back.close()


def test_guest_ram_is_a_memfd_that_a_reboot_clears() -> None:
    plain = GuestMemory(4 << 20)
    assert plain.fd == -1 and plain.file_regions() == ()  # not shared unless asked
    plain.close()
    memory = GuestMemory(4 << 20, shared=True)
    try:
        memory.write(0x2000, b"left over")
        ((gpa, size, hva, offset),) = memory.file_regions()
        assert (gpa, size, hva) == memory.regions()[0]
        with open(f"/proc/self/fd/{memory.fd}", "rb") as f:  # another mapper sees the bytes
            f.seek(offset + 0x2000)
            assert f.read(9) == b"left over"
        memory.discard()
        assert memory.read(0x2000, 9) == bytes(9)
    finally:
        memory.close()


def test_a_device_reset_takes_the_rings_back_and_a_new_driver_starts_over(
    driver: Driver,
) -> None:
    """What a guest reboot does: status 0, then a new driver on fresh rings."""
    driver.bring_up()
    driver.submit(T_OUT, 2, b"\x33" * 512)
    driver.wait_used(1)
    driver.wr(vp.STATUS, 1, 0)
    assert driver.device.backend._running == []  # GET_VRING_BASE: the back end let go
    driver.ram.data[0x1000:0x10000] = bytes(0xF000)  # the new driver's rings, zeroed
    driver.ring = RingBuilder(driver.ram, 16)  # type: ignore[arg-type]
    driver.bring_up()
    r = driver.submit(T_IN, 2, read=512)
    assert driver.wait_used(1) == [(r, 513)]
    addr = struct.unpack_from("<Q", driver.ram.data, 0x1000 + 16 * ((r + 1) % 16))[0]
    assert bytes(driver.ram.data[addr : addr + 512]) == b"\x33" * 512
