"""virtio-net on passt: user-mode networking with no privileges (``--net passt``).

passt itself, started and framed: passt_link.py.

Data path (the device I/O loop, in Python, as the TAP device without vhost):
- transmit: each chain is the 12-byte ``virtio_net_hdr_v1`` and a frame; each frame goes
  out behind its length in a ``sendmsg`` of its own, as QEMU writes them, straight from
  guest memory, never blocking (see ``_send``). Never several frames in one call: Debian
  12's passt loses frames then (see ``_transmit``). No checksum or segmentation offload
  is offered (passt takes whole frames only), but a 65520-byte MTU is (VIRTIO_NET_F_MTU,
  passt's own default), so TCP still moves in large frames;
- receive: the stream is read in large pieces into a buffer, cut into frames, and each is
  copied behind a zeroed header into the guest's receive chains, spread over several with
  MRG_RXBUF. When the guest has no buffers left the socket is still read: the frames are
  held (passt would drop what its socket cannot take) until the guest kicks the receive
  queue (see ``_receive``).
"""

from __future__ import annotations

import _socket
import select
import struct
import time
from collections.abc import Sequence

from qumran.vmm.devices.virtio.device import DeviceContext, DeviceId, VirtioDevice
from qumran.vmm.devices.virtio.net import F_MAC, F_MRG_RXBUF, F_STATUS, LINK_UP, QUEUE_SIZE, RX, TX
from qumran.vmm.devices.virtio.passt_link import MAX_FRAME, MTU, PasstLink
from qumran.vmm.devices.virtio.queue import QueueError
from qumran.vmm.devices.virtio.tap import NET_HDR_LEN
from qumran.vmm.log import get_logger

log = get_logger(__name__)

F_MTU = 1 << 3  # 5.1.3: the device reports its maximum MTU in the configuration space
MAX_FRAME_VIEWS = 64  # more buffers than this in one frame: joined into one first
_ZERO_HDR = bytes(NET_HDR_LEN)
POLLIN, POLLOUT = select.POLLIN, select.POLLOUT


class PasstNet(VirtioDevice):
    device_id = DeviceId.NET
    name = "virtio-net"

    def __init__(self, link: PasstLink, mac: bytes) -> None:
        config = mac + struct.pack("<HHH", LINK_UP, 1, MTU)  # 5.1.4: mac, status, pairs, mtu
        super().__init__((QUEUE_SIZE, QUEUE_SIZE), F_MAC | F_STATUS | F_MRG_RXBUF | F_MTU, config)
        self.link, self.mac = link, mac
        self._chains: list[tuple[int, list[memoryview], int]] = []  # popped: head, views, room
        self._room = 0
        self._merge = False
        self._watching = False
        # rx_no_room: a frame waited for the guest's buffers (held meanwhile; rx_held_peak
        # in the status: the most bytes read and not yet given, at once); tx_full: passt's
        # side of the socket was full, and tx_wait_us the time spent waiting on it.
        self.counters = {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0,
                         "rx_dropped": 0, "rx_reads": 0, "rx_no_room": 0, "tx_sends": 0,
                         "tx_full": 0, "tx_wait_us": 0}  # fmt: skip

    def activated(self, ctx: DeviceContext) -> None:
        self._merge = bool(ctx.features & F_MRG_RXBUF)
        self._watch(ctx)

    def reset(self) -> None:
        ctx = self.ctx
        if ctx is not None and self._watching:
            ctx.loop.remove_reader(self.link.fd)
        self._watching = False
        self._chains, self._room = [], 0
        super().reset()

    def _watch(self, ctx: DeviceContext) -> None:
        if not self._watching and self.link.alive:
            self._watching = True
            ctx.loop.add_reader(self.link.fd, lambda: self.serve(ctx, RX))

    def _unwatch(self, ctx: DeviceContext) -> None:
        if self._watching:
            ctx.loop.remove_reader(self.link.fd)
            self._watching = False

    def process(self, ctx: DeviceContext, index: int) -> None:
        if index == TX:
            if self._transmit(ctx):
                self._receive(ctx)  # an answer made inside passt's sendmsg, as for a TAP
        else:
            self._receive(ctx)

    # --- receive --------------------------------------------------------------------------

    def _receive(self, ctx: DeviceContext) -> None:
        """Give the guest every whole frame it has room for, and read on while passt sends:
        what the guest has no room for yet is held (``PasstLink.fill``), not left in
        passt's small socket, where the next frames would be dropped."""
        link = self.link
        packets = nbytes = 0
        try:
            while True:
                length = link.next_frame()
                if length >= 0 and self._take_room(ctx, NET_HDR_LEN + length):
                    begin = link.start + 4
                    if not self._merge and self._chains[0][2] < NET_HDR_LEN + length:
                        # Larger than a whole buffer: dropped, the buffer kept for the next.
                        self.counters["rx_dropped"] += 1
                    else:
                        self._deliver(ctx, memoryview(link.buf)[begin : begin + length])
                        packets += 1
                        nbytes += length
                    link.start = begin + length
                    continue
                if not link.alive:
                    self._unwatch(ctx)
                    return
                got = link.fill()
                self.counters["rx_reads"] += 1
                if got == 0:
                    log.warning("passt closed the connection; the NIC has no link now")
                    self._unwatch(ctx)
                    return
                if got < 0:
                    if length >= 0:  # a frame waits for the guest's buffers
                        self.counters["rx_no_room"] += 1
                    if got == -2:  # and the hold is full: passt's socket fills from now
                        self._unwatch(ctx)  # until the guest kicks RX with new buffers
                    else:
                        self._watch(ctx)
                    return
        finally:
            if packets:
                self.counters["rx_packets"] += packets
                self.counters["rx_bytes"] += nbytes
                ctx.used(RX)

    def _take_room(self, ctx: DeviceContext, need: int) -> bool:
        """Pop receive chains until they hold ``need`` bytes (one chain without MRG_RXBUF);
        False when the guest has not given enough."""
        queue, ram = ctx.queues[RX], ctx.ram
        while not self._chains or (self._merge and self._room < need):
            chain = queue.pop(ram)
            if chain is None:
                return False
            room = chain.writable_len
            if room < NET_HDR_LEN:
                raise QueueError("virtio-net receive buffer smaller than the header")
            self._chains.append((chain.head, chain.writable, room))
            self._room += room
        return True

    def _deliver(self, ctx: DeviceContext, frame: memoryview) -> None:
        """Copy header and frame into as many popped chains as they fill."""
        total = NET_HDR_LEN + len(frame)
        count, room = 0, 0
        while room < total:
            room += self._chains[count][2]
            count += 1
        hdr = bytearray(_ZERO_HDR)
        hdr[10:12] = count.to_bytes(2, "little")  # num_buffers (5.1.6.4)
        pieces = [memoryview(hdr), frame]
        push = ctx.queues[RX].push
        left = total
        for head, views, chain_room in self._chains[:count]:
            written = min(chain_room, left)
            _scatter(pieces, views, written)
            push(head, written)
            left -= written
            self._room -= chain_room
        del self._chains[:count]

    # --- transmit -------------------------------------------------------------------------

    def _transmit(self, ctx: DeviceContext) -> int:
        """Send every chain on the transmit queue to passt; the number of frames sent.

        One frame per ``sendmsg``, never a batch. passt 0.0~git20230309 (Debian 12; tap.c,
        tap_handler_passt) reads whatever is queued on its socket, and when that ends inside
        a frame, completes the frame with ONE more recv: if that returns short, it drops the
        frame and every frame parsed in the same read, and then takes the middle of the
        frame for a length (the stream is out of step until a read happens to begin on a
        frame). It also drops 1 to 4 bytes of a length left at the end of a read. The
        kernel queues a stream sendmsg in pieces of at most 36,544 bytes (SKB_MAX_HEAD(0)
        + 32 KiB on Linux 6.1 with 4 KiB pages, seen in passt's reads), and a reader takes
        a piece whole. A frame
        sent alone, starting a sendmsg, is at most two pieces: if passt sees part of it,
        the rest is one piece, queued at once, which its one recv takes whole (QEMU writes
        frames this way). Frames packed into one sendmsg are cut anywhere instead: with the
        rest of a frame in two pieces, passt read one, lost frames, and a guest-to-host
        transfer came up short (passt also takes a bare FIN without checking that the data
        before it arrived: it ends the host's connection after a loss near the end).
        """
        queue, ram = ctx.queues[TX], ctx.ram
        done = packets = nbytes = 0
        try:
            while (chain := queue.pop(ram)) is not None:
                if chain.writable:
                    raise QueueError("virtio-net transmit chain with device-writable buffers")
                views = _skip(chain.readable, NET_HDR_LEN)
                length = sum(map(len, views))
                if len(views) > MAX_FRAME_VIEWS:  # a frame in crumbs: copied whole
                    views = [b"".join(views)]
                # passt refuses anything larger anyway; a dead passt takes nothing.
                if 0 < length <= MAX_FRAME and self.link.alive:
                    self._send(ctx, [length.to_bytes(4, "big"), *views])
                    packets += 1
                    nbytes += length
                queue.push(chain.head, 0)
                done += 1
        finally:
            if done:
                self.counters["tx_packets"] += packets
                self.counters["tx_bytes"] += nbytes
                ctx.used(TX)
        return packets

    def _send(self, ctx: DeviceContext, iov: list[memoryview | bytes]) -> None:
        """All of ``iov`` (one frame), however many calls it takes; a dead passt drops it.
        A call that takes part of a frame ends on one of the kernel's pieces, so the rest
        goes in one piece too (see ``_transmit``).

        Never blocks while passt has frames for us: passt does not wait for a full socket
        (it drops what it cannot write), so a device stuck in sendmsg would lose the very
        ACKs that let the guest go on. While passt's side is full, what it sent is taken
        in, then the device waits until either direction can move.
        """
        sock, fd = self.link.sock, self.link.fd
        while iov:
            try:
                self.counters["tx_sends"] += 1
                sent = sock.sendmsg(iov, [], _socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                self.counters["tx_full"] += 1
                began = time.monotonic()
                self._receive(ctx)
                events = POLLOUT | (POLLIN if self._watching else 0)
                poller = select.poll()
                poller.register(fd, events)
                poller.poll(20)  # and then look at the rings again, kicked or not
                self.counters["tx_wait_us"] += int((time.monotonic() - began) * 1e6)
                continue
            except OSError as exc:
                log.warning("passt: sending failed (%s); the NIC has no link now", exc.strerror)
                self.link.alive = False
                return
            iov = _skip(iov, sent)

    def status(self) -> dict[str, object]:
        return {"type": "net", "backend": "passt", "mac": self.mac.hex(":"),
                "link": self.link.alive, "forwards": [str(f) for f in self.link.forwards],
                **self.counters, "rx_held_peak": self.link.held_peak}  # fmt: skip


def _skip(views: Sequence[memoryview | bytes], n: int) -> list[memoryview | bytes]:
    """``views`` without their first ``n`` bytes."""
    out: list[memoryview | bytes] = []
    for i, v in enumerate(views):
        if n < len(v):
            out.append(memoryview(v)[n:] if n else v)
            out += views[i + 1 :]
            return out
        n -= len(v)
    return out


def _scatter(pieces: list[memoryview], views: list[memoryview], count: int) -> None:
    """Move the first ``count`` bytes of ``pieces`` into ``views``, consuming ``pieces``."""
    vi, voff = 0, 0
    while count:
        src = pieces[0]
        dst = views[vi]
        n = min(len(src), len(dst) - voff, count)
        dst[voff : voff + n] = src[:n]
        count -= n
        voff += n
        if n == len(src):
            pieces.pop(0)
        else:
            pieces[0] = src[n:]
        if voff == len(dst):
            vi, voff = vi + 1, 0
