"""virtio-net on a TAP device (virtio 1.2, 5.1 "Network Device").

The TAP is opened with IFF_VNET_HDR and a 12-byte header (TUNSETVNETHDRSZ), which is exactly
``struct virtio_net_hdr_v1`` (5.1.6): frames go between the TAP and the guest's buffers,
header included, with ``readv``/``writev`` on views of guest memory and no copy in Python.
No offloads are offered, so every header the guest sends says "plain frame".

RX is driven by the device I/O loop: the TAP fd is watched while the guest has receive
buffers; when it runs out, the watch stops until the guest kicks the receive queue.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import secrets
import struct
from dataclasses import dataclass

from qumran.kvm.ioctl import ior, iow
from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.devices.virtio.device import DeviceContext, DeviceId, VirtioDevice
from qumran.vmm.devices.virtio.queue import DescChain, QueueError

QUEUE_SIZE = 256
RX, TX = 0, 1
F_MAC, F_STATUS = 1 << 5, 1 << 16
LINK_UP = 1
NET_HDR_LEN = 12  # struct virtio_net_hdr_v1 (num_buffers included with VERSION_1)

# include/uapi/linux/if_tun.h
_T = ord("T")
TUNSETIFF = iow(_T, 202, ctypes.c_int)
TUNGETIFF = ior(_T, 210, ctypes.c_uint)
TUNSETVNETHDRSZ = iow(_T, 216, ctypes.c_int)
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then the flags member of the union


def parse_mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def random_mac() -> bytes:
    """A locally administered unicast address in QEMU's 52:54:00 range."""
    return b"\x52\x54\x00" + secrets.token_bytes(3)


@dataclass
class Tap:
    name: str
    fd: int

    @classmethod
    def open(cls, name: str | None, fd: int | None) -> Tap:
        if fd is not None:
            return cls._adopt(fd)
        assert name is not None
        try:
            tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise DeviceError(f"cannot create TAP {name}: /dev/net/tun: {exc.strerror}") from None
        try:
            req = IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            fcntl.ioctl(tun, TUNSETIFF, req)
            fcntl.ioctl(tun, TUNSETVNETHDRSZ, struct.pack("i", NET_HDR_LEN))
        except OSError as exc:
            os.close(tun)
            hint = " (creating a TAP needs CAP_NET_ADMIN)" if exc.errno == errno.EPERM else ""
            raise DeviceError(f"cannot create TAP {name}: {exc.strerror}{hint}") from None
        return cls(name, tun)

    @classmethod
    def _adopt(cls, fd: int) -> Tap:
        try:
            raw = fcntl.ioctl(fd, TUNGETIFF, bytes(IFREQ.size))
            name, flags = IFREQ.unpack(raw)
            if not flags & IFF_TAP or not flags & IFF_VNET_HDR or not flags & IFF_NO_PI:
                raise DeviceError(f"fd {fd} is not a TAP opened with IFF_VNET_HDR|IFF_NO_PI")
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", NET_HDR_LEN))
            os.set_blocking(fd, False)
        except OSError as exc:
            raise DeviceError(f"--net fd={fd}: not a usable TAP: {exc.strerror}") from None
        return cls(name.rstrip(b"\0").decode(errors="replace"), fd)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class VirtioNet(VirtioDevice):
    device_id = DeviceId.NET
    name = "virtio-net"

    def __init__(self, tap: Tap, mac: bytes) -> None:
        config = mac + struct.pack("<HH", LINK_UP, 1)  # 5.1.4: mac, status, max pairs
        super().__init__((QUEUE_SIZE, QUEUE_SIZE), F_MAC | F_STATUS, config)
        self.tap, self.mac = tap, mac
        self._held: DescChain | None = None
        self._watching = False
        self.counters = {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0}

    def activated(self, ctx: DeviceContext) -> None:
        self._watch(ctx)

    def reset(self) -> None:
        ctx = self.ctx
        if ctx is not None and self._watching:
            ctx.loop.remove_reader(self.tap.fd)
        self._watching = False
        self._held = None
        super().reset()

    def _watch(self, ctx: DeviceContext) -> None:
        if not self._watching:
            self._watching = True
            ctx.loop.add_reader(self.tap.fd, functools.partial(self.serve, ctx, RX))

    def process(self, ctx: DeviceContext, index: int) -> None:
        if index == TX:
            self._transmit(ctx)
        else:  # new receive buffers: receive what waits and watch the TAP again
            self._receive(ctx)

    def _receive(self, ctx: DeviceContext) -> None:
        queue = ctx.queues[RX]
        done = 0
        while True:
            chain = self._held or queue.pop(ctx.ram)
            self._held = None
            if chain is None:
                if self._watching:  # no buffers: stop until the guest kicks RX
                    ctx.loop.remove_reader(self.tap.fd)
                    self._watching = False
                break
            if chain.writable_len < NET_HDR_LEN:
                raise QueueError("virtio-net receive buffer smaller than the header")
            try:
                n = os.readv(self.tap.fd, chain.writable)
            except BlockingIOError:
                self._held = chain
                self._watch(ctx)
                break
            except OSError:
                self._held = chain
                break
            _set_num_buffers(chain.writable)
            queue.push(chain.head, n)
            self.counters["rx_packets"] += 1
            self.counters["rx_bytes"] += n - NET_HDR_LEN
            done += 1
        if done:
            ctx.used(RX)

    def _transmit(self, ctx: DeviceContext) -> None:
        queue = ctx.queues[TX]
        done = 0
        while (chain := queue.pop(ctx.ram)) is not None:
            if chain.writable:
                raise QueueError("virtio-net transmit chain with device-writable buffers")
            length = chain.readable_len
            if length > NET_HDR_LEN:
                try:
                    os.writev(self.tap.fd, chain.readable)
                    self.counters["tx_packets"] += 1
                    self.counters["tx_bytes"] += length - NET_HDR_LEN
                except OSError:
                    pass  # a full or downed TAP drops the frame, as a wire would
            queue.push(chain.head, 0)
            done += 1
        if done:
            ctx.used(TX)

    def status(self) -> dict[str, object]:
        return {"type": "net", "tap": self.tap.name, "mac": self.mac.hex(":"), **self.counters}


def _set_num_buffers(views: list[memoryview]) -> None:
    """5.1.6.4: without VIRTIO_NET_F_MRG_RXBUF, num_buffers (header bytes 10-11) is 1."""
    pos = 0
    for v in views:
        for i in range(len(v)):
            if pos == 10:
                v[i] = 1
            elif pos == 11:
                v[i] = 0
                return
            pos += 1
