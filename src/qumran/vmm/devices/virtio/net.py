"""virtio-net on a TAP device (virtio 1.2, 5.1 "Network Device").

Frames go between the TAP and the guest's buffers with the 12-byte ``virtio_net_hdr_v1``
(5.1.6) in front, by ``readv``/``writev`` on views of guest memory: no copy in Python, and
the header passes through unchanged, since the TAP speaks the same header (``tap.py``).

Offloads (5.1.3, 5.1.6.2, 5.1.6.4), so that TCP moves in segments of up to 64 KiB instead
of frames of one MTU:
- transmit: CSUM and HOST_TSO4/TSO6/ECN are always offered; the TAP takes partially
  checksummed and GSO frames as they are, and the host's kernel finishes them;
- receive: GUEST_CSUM and GUEST_TSO4/TSO6/ECN are offered as far as the TAP supports them,
  and what the driver accepted is passed to the TAP (TUNSETOFFLOAD) at DRIVER_OK, and taken
  back at reset.
Large receive segments need room in the receive queue. Of the two ways, "big packets"
(5.1.6.3.1: every chain holds 65562 bytes) and MRG_RXBUF (5.1.6.4: a frame spreads over as
many chains as it needs, num_buffers says how many), this device offers the second: with big
packets, Linux makes every receive chain an indirect table of 19 descriptors, and walking
one per TCP ACK took a quarter of the device thread's time in the iperf3 benchmark; merged
buffers are one descriptor each, and a 64 KiB segment costs about as many descriptors
either way. The device pops chains ahead until they could hold the largest frame the TAP
may give, reads with one ``readv`` over all of them, and hands back those the frame filled.
A driver that refuses MRG_RXBUF gets one frame per chain.

Each kick or wake-up drains its queue entirely and sends one interrupt for the batch. RX is
driven by the device I/O loop: the TAP fd is watched while the guest has receive buffers;
when it runs out, the watch stops until the guest kicks the receive queue.

With vhost (``vhost.py``) the same device model hands both rings and the TAP to the host
kernel at DRIVER_OK and takes them back at reset; nothing above runs then, and the frame
counters stay at zero (the TAP's own counters on the host count the traffic).
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable

from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.devices.virtio.device import DeviceContext, DeviceId, VirtioDevice
from qumran.vmm.devices.virtio.queue import QueueError
from qumran.vmm.devices.virtio.tap import (
    NET_HDR_LEN,
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_TSO_ECN,
    Tap,
)
from qumran.vmm.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qumran.vmm.devices.virtio.vhost import VhostNet

log = get_logger(__name__)

QUEUE_SIZE = 256
IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers one readv takes (1024 on Linux)
RX, TX = 0, 1
LINK_UP = 1

# 5.1.3 "Feature bits"
F_CSUM = 1 << 0  # the device takes frames with a partial checksum
F_GUEST_CSUM = 1 << 1  # the driver takes frames with a partial checksum
F_MAC = 1 << 5
F_GUEST_TSO4 = 1 << 7
F_GUEST_TSO6 = 1 << 8
F_GUEST_ECN = 1 << 9
F_HOST_TSO4 = 1 << 11
F_HOST_TSO6 = 1 << 12
F_HOST_ECN = 1 << 13
F_MRG_RXBUF = 1 << 15
F_STATUS = 1 << 16
TX_OFFLOADS = F_CSUM | F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN
# guest feature -> TAP offload, for the receive direction
_GUEST_TO_TUN = ((F_GUEST_CSUM, TUN_F_CSUM), (F_GUEST_TSO4, TUN_F_TSO4),
                 (F_GUEST_TSO6, TUN_F_TSO6), (F_GUEST_ECN, TUN_F_TSO_ECN))  # fmt: skip
# The largest frame the TAP gives: a 64 KiB GSO segment (the kernel's GSO_LEGACY_MAX_SIZE)
# plus a VLAN tag; without receive TSO, an Ethernet frame with a VLAN tag.
MAX_GSO_FRAME = NET_HDR_LEN + 65536 + 4
MAX_FRAME = NET_HDR_LEN + 1518


def offered_features(supported: int) -> int:
    """The device features for a TAP that supports the TUN_F_* set ``supported``."""
    features = F_MAC | F_STATUS | F_MRG_RXBUF | TX_OFFLOADS
    for guest, tun in _GUEST_TO_TUN:
        if supported & tun:
            features |= guest
    return features


def tap_offloads(features: int) -> int:
    """The TUN_F_* set for the negotiated ``features``, keeping 5.1.3.1's dependencies
    (GUEST_TSO needs GUEST_CSUM, GUEST_ECN needs a GUEST_TSO), which the TAP enforces too."""
    if not features & F_GUEST_CSUM:
        return 0
    offloads = TUN_F_CSUM
    if features & F_GUEST_TSO4:
        offloads |= TUN_F_TSO4
    if features & F_GUEST_TSO6:
        offloads |= TUN_F_TSO6
    if features & F_GUEST_ECN and offloads & (TUN_F_TSO4 | TUN_F_TSO6):
        offloads |= TUN_F_TSO_ECN
    return offloads


def parse_mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def random_mac() -> bytes:
    """A locally administered unicast address in QEMU's 52:54:00 range. ``os.urandom``, not
    ``secrets``: that module brings hmac and OpenSSL's libcrypto (~4 MiB resident in every
    VM process) for three random bytes."""
    return b"\x52\x54\x00" + os.urandom(3)


class VirtioNet(VirtioDevice):
    device_id = DeviceId.NET
    name = "virtio-net"

    def __init__(self, tap: Tap, mac: bytes, vhost: VhostNet | None = None) -> None:
        config = mac + struct.pack("<HH", LINK_UP, 1)  # 5.1.4: mac, status, max pairs
        super().__init__((QUEUE_SIZE, QUEUE_SIZE), offered_features(tap.supported), config)
        self.tap, self.mac, self.vhost = tap, mac, vhost
        if vhost is not None:
            self.rings_in_kernel = True
            self.device_features = vhost.offerable(self.device_features)
        # Receive chains popped but not filled yet: (head, bytes, number of views), their
        # views in one list for readv, and their bytes in all.
        self._chains: list[tuple[int, int, int]] = []
        self._iov: list[memoryview] = []
        self._room = 0
        self._need = MAX_FRAME  # room to hold before reading a frame
        self._merge = False  # MRG_RXBUF negotiated
        self._watching = False
        self.counters = {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0}

    def activated(self, ctx: DeviceContext) -> None:
        offloads = tap_offloads(ctx.features)
        self.tap.set_offloads(offloads)
        self._merge = bool(ctx.features & F_MRG_RXBUF)
        self._need = MAX_GSO_FRAME if offloads & (TUN_F_TSO4 | TUN_F_TSO6) else MAX_FRAME
        if self.vhost is None:
            self._watch(ctx)
            return
        assert ctx.kernel is not None
        try:
            self.vhost.start(ctx, ctx.kernel, self.tap.fd)
        except DeviceError as exc:
            self.vhost.stop()
            self.fail(str(exc))

    def vectors_changed(self) -> None:
        if self.vhost is not None:
            self.vhost.update_calls()

    def reset(self) -> None:
        ctx = self.ctx
        if ctx is not None and self._watching:
            ctx.loop.remove_reader(self.tap.fd)
        self._watching = False
        if self.vhost is not None:
            self.vhost.stop()
        self._chains, self._iov, self._room = [], [], 0
        self.tap.set_offloads(0)  # the next driver may accept less
        super().reset()

    def _watch(self, ctx: DeviceContext) -> None:
        if not self._watching:
            self._watching = True
            ctx.loop.add_reader(self.tap.fd, functools.partial(self.serve, ctx, RX))

    def process(self, ctx: DeviceContext, index: int) -> None:
        if self.vhost is not None:  # the kernel serves the rings
            return
        if index == TX:
            if self._transmit(ctx):
                # What was just sent is often answered at once (a TCP ACK, made by the host's
                # stack inside writev): take it now instead of after one more wake-up.
                self._receive(ctx)
        else:  # new receive buffers: receive what waits and watch the TAP again
            self._receive(ctx)

    def _receive(self, ctx: DeviceContext) -> None:
        queue = ctx.queues[RX]
        pop, push, ram, readv, fd = queue.pop, queue.push, ctx.ram, os.readv, self.tap.fd
        chains, iov, need, merge = self._chains, self._iov, self._need, self._merge
        packets = nbytes = 0
        try:
            while True:
                # Room for the largest frame: with merged buffers, several chains.
                while (self._room < need and merge) or not chains:
                    chain = pop(ram)
                    if chain is None:
                        break
                    room = chain.writable_len
                    if room < NET_HDR_LEN:  # 5.1.6.3.1: each buffer holds a header at least
                        raise QueueError("virtio-net receive buffer smaller than the header")
                    chains.append((chain.head, room, len(chain.writable)))
                    iov += chain.writable
                    self._room += room
                if not chains or (merge and self._room < need):
                    if self._watching:  # too few buffers: wait until the guest kicks RX
                        ctx.loop.remove_reader(fd)
                        self._watching = False
                    return
                bufs = iov if merge else iov[: chains[0][2]]
                room = self._room if merge else chains[0][1]
                if len(bufs) > IOV_MAX:  # a guest's buffers in crumbs: what readv can take
                    bufs = bufs[:IOV_MAX]
                    room = sum(len(b) for b in bufs)
                try:
                    n = readv(fd, bufs)
                except BlockingIOError:
                    self._watch(ctx)
                    return
                except OSError as exc:  # not a passing state: stop, rather than spin on it
                    log.warning("%s: reading the TAP failed (%s); receive stopped",
                                self.tap.name, exc.strerror)  # fmt: skip
                    if self._watching:
                        ctx.loop.remove_reader(fd)
                        self._watching = False
                    return
                # The TAP reports a frame's full length even when it did not fit: drop those.
                if NET_HDR_LEN <= n <= room:
                    self._deliver(push, n)
                    packets += 1
                    nbytes += n
        finally:
            if packets:
                self.counters["rx_packets"] += packets
                self.counters["rx_bytes"] += nbytes - packets * NET_HDR_LEN
                ctx.used(RX)

    def _deliver(self, push: Callable[[int, int], None], n: int) -> None:
        """Hand the guest the chains that the ``n`` bytes just read filled."""
        chains, left = self._chains, n
        count = views = 0
        while left > 0:
            _, room, nviews = chains[count]
            left -= room
            views += nviews
            count += 1
        first = self._iov[0]
        if len(first) >= NET_HDR_LEN:  # num_buffers, 5.1.6.4: before the guest may look
            first[10] = count
            first[11] = count >> 8
        else:
            _set_num_buffers(self._iov, count)
        left = n
        for head, room, _ in chains[:count]:
            push(head, min(room, left))
            left -= room
            self._room -= room
        del chains[:count]
        del self._iov[:views]

    def _transmit(self, ctx: DeviceContext) -> int:
        """Send every chain on the transmit queue; the number of frames sent."""
        queue = ctx.queues[TX]
        pop, push, ram, writev, fd = queue.pop, queue.push, ctx.ram, os.writev, self.tap.fd
        done = packets = nbytes = 0
        try:
            while (chain := pop(ram)) is not None:
                if chain.writable:
                    raise QueueError("virtio-net transmit chain with device-writable buffers")
                try:
                    n = writev(fd, chain.readable)
                except OSError:
                    n = 0  # a downed TAP or a header it refuses drops the frame, as a wire would
                if n > NET_HDR_LEN:
                    packets += 1
                    nbytes += n - NET_HDR_LEN
                push(chain.head, 0)
                done += 1
        finally:
            if done:
                self.counters["tx_packets"] += packets
                self.counters["tx_bytes"] += nbytes
                ctx.used(TX)
        return packets

    def status(self) -> dict[str, object]:
        offloads = [name for bit, name in _OFFLOAD_NAMES if self.tap.offloads & bit]
        vhost = self.vhost is not None
        return {"type": "net", "tap": self.tap.name, "mac": self.mac.hex(":"), "vhost": vhost,
                "rx_offloads": offloads, **self.counters}  # fmt: skip


_OFFLOAD_NAMES = ((TUN_F_CSUM, "csum"), (TUN_F_TSO4, "tso4"), (TUN_F_TSO6, "tso6"),
                  (TUN_F_TSO_ECN, "ecn"))  # fmt: skip


def _set_num_buffers(views: list[memoryview], count: int) -> None:
    """num_buffers (header bytes 10-11, little-endian), for a header split over buffers."""
    pos = 0
    for v in views:
        for i in range(len(v)):
            if pos in (10, 11):
                v[i] = count >> (8 * (pos - 10)) & 0xFF
                if pos == 11:
                    return
            pos += 1
