"""virtio-net on passt: user-mode networking with no privileges (``--net passt``).

passt (https://passt.top, Debian package ``passt``) is a user-mode network stack: it gives
the guest DHCP, DNS, outbound TCP/UDP/ICMP through ordinary sockets of the host, and port
forwards into the guest, all as an unprivileged process of its own. It talks to the VMM over
a connected stream socket with QEMU's "stream" framing: each Ethernet frame is preceded by
its length as a 32-bit big-endian number, with no virtio header.

Addresses are QEMU's user-mode ones, so that a definition means the same with either
hypervisor: the guest is 10.0.2.15/24, the gateway 10.0.2.2 (passt maps connections to it
onto the host's loopback, as QEMU's slirp does), DNS what the host uses. On a host without
a default route passt is given the loopback as its interface (see ``start_passt``).

Process: passt is given one end of a socketpair (``--fd``) and ``--one-off``, and started
without ``--foreground``: it checks its options, binds the forwarded ports, then forks into
the background, and the process we started exits — with 0 once it is set up, or with an
error that stops the VM before the guest starts. The background passt lives as long as the
socket: however the VMM ends (even SIGKILL), its end closes and passt quits. It is started
with ``os.posix_spawn`` and waited for with ``os.waitpid`` (see ``_run_passt``), found on
PATH by a few lines of our own, and the socket is ``_socket``'s: ``subprocess``, ``shutil``
and ``socket.py`` would cost every VM process with passt about 1 MiB of resident memory.

Data path (the device I/O loop, in Python, as the TAP device without vhost):
- transmit: each chain is the 12-byte ``virtio_net_hdr_v1`` and a frame; each frame goes
  out behind its length in a ``sendmsg`` of its own, as QEMU writes them, straight from
  guest memory, never blocking (see ``_send``). Never several frames in one call: Debian
  12's passt loses frames then (see ``_transmit``). No checksum or segmentation offload
  is offered (passt takes whole frames only), but a 65520-byte MTU is (VIRTIO_NET_F_MTU,
  passt's own default), so TCP still moves in large frames;
- receive: the stream is read in large pieces into a buffer, cut into frames, and each is
  copied behind a zeroed header into the guest's receive chains, spread over several with
  MRG_RXBUF. When the guest has no buffers left the socket is not read (passt then holds
  the frames back) until the guest kicks the receive queue.
"""

from __future__ import annotations

import _socket
import contextlib
import fcntl
import os
import select
import signal
import struct
import time
from collections.abc import Sequence

from qumran.record import Record
from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.devices.virtio.device import DeviceContext, DeviceId, VirtioDevice
from qumran.vmm.devices.virtio.net import F_MAC, F_MRG_RXBUF, F_STATUS, LINK_UP, QUEUE_SIZE, RX, TX
from qumran.vmm.devices.virtio.queue import QueueError
from qumran.vmm.devices.virtio.tap import NET_HDR_LEN
from qumran.vmm.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

log = get_logger(__name__)

F_MTU = 1 << 3  # 5.1.3: the device reports its maximum MTU in the configuration space
MTU = 65520  # passt's default: the largest 802.3 frame's payload, rounded to 32 bits
MAX_FRAME = 65535 + 4 + 14  # what a 16-bit IP length allows, a VLAN tag and the header
GUEST_ADDR, GATEWAY, PREFIX = "10.0.2.15", "10.0.2.2", "24"  # QEMU's user-mode addresses
LOOPBACK_MAC = "52:55:0a:00:02:02"  # passt's own MAC without a default route: slirp's
READ_SIZE = 1 << 18
# passt never waits for its socket: a frame it cannot write at once is dropped, and comes
# again only when TCP retransmits it. So what passt sent and the guest has no room for yet
# is held here, up to this much (beyond a TCP receive window, so the guest's own flow
# control keeps it from filling), rather than left in the socket.
HOLD_MAX = 16 << 20
# passt sets no send buffer on a socket given with --fd: the kernel's default, about 200 KB,
# three 64 KiB frames. Asked for on its end before passt starts; the kernel allows
# net.core.wmem_max at most (doubled). Twice the default took host-to-guest TCP from 94 to
# 153 Mbit/s in the KVM test host (BENCHMARKS.md).
PEER_SNDBUF = 1 << 22
SETUP_TIMEOUT = 30.0  # passt checks its options and binds its ports in milliseconds
MAX_FRAME_VIEWS = 64  # more buffers than this in one frame: joined into one first
# Our socket's send buffer (the kernel doubles it). It must stay above 73 KB, so that the
# kernel queues a frame in at most two pieces (see _transmit), and below passt's 8 MB read
# buffer, so that passt's reads always end on a piece's end.
SNDBUF = 1 << 21
_ZERO_HDR = bytes(NET_HDR_LEN)
POLLIN, POLLOUT = select.POLLIN, select.POLLOUT


class PasstForward(Record):
    """One ``forward=PROTO:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`` (QEMU's hostfwd)."""

    __slots__ = __match_args__ = ("proto", "host_addr", "host_port", "guest_port")

    def __init__(self, proto: str, host_addr: str, host_port: int, guest_port: int) -> None:
        self.proto: Final = proto
        self.host_addr: Final = host_addr
        self.host_port: Final = host_port
        self.guest_port: Final = guest_port

    @classmethod
    def parse(cls, text: str, where: str) -> PasstForward:
        proto, _, rest = text.partition(":")
        host, _, guest = rest.partition("-")
        host_addr, _, host_port = host.rpartition(":")
        guest_addr, _, guest_port = guest.rpartition(":")
        ok = proto in ("tcp", "udp") and host_port.isdigit() and guest_port.isdigit()
        if not ok or not 0 < int(host_port) < 65536 or not 0 < int(guest_port) < 65536:
            raise DeviceError(
                f"{where}: forward {text!r} is not PROTO:[HOSTADDR]:HOSTPORT-:GUESTPORT"
                " (e.g. tcp:127.0.0.1:2222-:22)"
            )
        if guest_addr not in ("", GUEST_ADDR):
            raise DeviceError(
                f"{where}: forward {text!r}: passt forwards to the guest's own address "
                f"({GUEST_ADDR}); leave the guest address out"
            )
        if host_addr:
            try:
                _socket.inet_aton(host_addr)
            except OSError:
                raise DeviceError(f"{where}: forward {text!r}: bad host address") from None
        return cls(proto, host_addr, int(host_port), int(guest_port))

    def passt_args(self) -> list[str]:
        where = f"{self.host_addr}/" if self.host_addr else ""
        flag = "-t" if self.proto == "tcp" else "-u"
        return [flag, f"{where}{self.host_port}:{self.guest_port}"]

    def __str__(self) -> str:
        return f"{self.proto}:{self.host_addr}:{self.host_port}-:{self.guest_port}"


class PasstSpec(Record):
    """``passt[,mac=MAC][,forward=RULE]...``."""

    __slots__ = __match_args__ = ("mac", "forwards")

    def __init__(self, mac: str | None = None, forwards: tuple[PasstForward, ...] = ()) -> None:
        self.mac: Final = mac
        self.forwards: Final = forwards

    @classmethod
    def parse(cls, text: str) -> PasstSpec:
        from qumran.vmm.devices.virtio.backends import MAC_RE

        where = f"--net {text!r}"
        first, *items = text.split(",")
        assert first == "passt"
        mac = None
        forwards: list[PasstForward] = []
        for item in items:
            key, eq, value = item.partition("=")
            if key == "mac" and eq and mac is None:
                if not MAC_RE.fullmatch(value) or int(value[:2], 16) & 1:
                    raise DeviceError(f"{where}: bad MAC address {value!r}")
                mac = value
            elif key == "forward" and eq:
                forwards.append(PasstForward.parse(value, where))
            else:
                raise DeviceError(f"{where}: after passt, expected mac=MAC and forward=RULE")
        return cls(mac, tuple(forwards))


def passt_binary() -> str:
    found = _on_path("passt") or next(
        (p for p in ("/usr/bin/passt", "/usr/sbin/passt") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise DeviceError("--net passt: passt is not installed (Debian: apt install passt)")
    return found


def _on_path(name: str) -> str | None:
    """The first executable ``name`` in a directory of PATH, as ``shutil.which`` finds it."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


class PasstLink:
    """The stream socket to a running passt, and the frames read from it but not yet
    given to the guest (a backend: it outlives guest reboots)."""

    def __init__(self, sock: _socket.socket, forwards: tuple[PasstForward, ...]) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.forwards = forwards
        self.buf = bytearray(READ_SIZE + MAX_FRAME)
        self.start = self.end = 0  # unconsumed bytes: buf[start:end]
        self.alive = True
        self.held_peak = 0  # the most bytes read and not yet given to the guest, at once

    @classmethod
    def start_passt(cls, spec: PasstSpec, name: str = "") -> PasstLink:
        binary = passt_binary()
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        with contextlib.suppress(OSError):  # passt sets none on a socket given with --fd
            theirs.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, PEER_SNDBUF)
        # passt's end, as a copy the child inherits (ours are all close-on-exec), numbered
        # above the standard descriptors, which the child gets anew.
        passed = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD, 3)
        theirs.close()
        argv = [binary, "--quiet", "--one-off", "--fd", str(passed),
                "--address", GUEST_ADDR, "--netmask", PREFIX, "--gateway", GATEWAY,
                "--mtu", str(MTU)]  # fmt: skip
        if not _default_route():
            # passt copies its host side from the interface with the default route; with
            # none (an offline host, the KVM test host) it would refuse to start. The
            # loopback serves: the guest still gets its lease, the host through the
            # gateway, and the forwards (QEMU's slirp needs no route either).
            argv += ["--interface", "lo", "--mac-addr", LOOPBACK_MAC]
        for fwd in spec.forwards:
            argv += fwd.passt_args()
        try:
            returncode, stderr = _run_passt(argv, passed)
        except OSError as exc:  # TimeoutError included
            ours.close()
            raise DeviceError(f"--net passt: cannot start passt: {exc}") from None
        finally:
            os.close(passed)
        if returncode != 0:
            ours.close()
            why = _passt_error(stderr.decode(errors="replace"))
            raise DeviceError(f"--net passt: passt failed to start: {why}")
        ours.setblocking(True)  # every call says MSG_DONTWAIT itself
        with contextlib.suppress(OSError):
            ours.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, SNDBUF)
            ours.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 1 << 21)
        log.info("%s: passt started (%s)", name or "net", " ".join(argv[1:]))
        return cls(ours, spec.forwards)

    def fill(self) -> int:
        """Read what passt sent; the bytes read, 0 at end of stream, -1 if none waits, -2
        if ``HOLD_MAX`` bytes are held already."""
        if self.start == self.end:
            self.start = self.end = 0
            if len(self.buf) > READ_SIZE + MAX_FRAME:  # the guest caught up: memory back
                self.buf = bytearray(READ_SIZE + MAX_FRAME)
        elif len(self.buf) - self.end < READ_SIZE // 2 and not self._make_room():
            return -2
        view = memoryview(self.buf)[self.end :]
        try:
            n = self.sock.recv_into(view, len(view), _socket.MSG_DONTWAIT)
        except BlockingIOError:
            return -1
        except OSError as exc:
            log.warning("passt: reading the socket failed (%s)", exc.strerror)
            n = 0
        finally:
            view.release()
        if n == 0:
            self.alive = False
        self.end += n
        self.held_peak = max(self.held_peak, self.end - self.start)
        return n

    def _make_room(self) -> bool:
        """Room to read behind the bytes held: moved to the front when that frees half the
        buffer or more, else the buffer doubled, up to ``HOLD_MAX``."""
        held = self.end - self.start
        if self.start >= len(self.buf) // 2 or len(self.buf) >= HOLD_MAX:
            if len(self.buf) - held < READ_SIZE // 2:
                return False
            self.buf[:held] = self.buf[self.start : self.end]
            self.start, self.end = 0, held
        else:
            self.buf.extend(bytes(min(len(self.buf), HOLD_MAX - len(self.buf))))
        return True

    def next_frame(self) -> int:
        """The length of the next complete frame in the buffer (at start + 4), or -1."""
        have = self.end - self.start
        if have < 4:
            return -1
        length = int.from_bytes(self.buf[self.start : self.start + 4], "big")
        if length > MAX_FRAME:  # the stream is out of step: nothing after it can be trusted
            log.warning("passt: frame of %d bytes; the link is dropped", length)
            self.alive = False
            self.start = self.end = 0
            return -1
        return length if have >= 4 + length else -1

    def close(self) -> None:
        if self.fd >= 0:
            self.fd = -1
            self.sock.close()  # passt (--one-off) quits when its end sees this


def _run_passt(argv: list[str], passed: int) -> tuple[int, bytes]:
    """Run the passt we start until it exits (its background copy goes on): its exit
    status, negative for a signal, and what it wrote on stderr. As ``subprocess.run`` with
    ``pass_fds=[passed]``, stdin and stdout on /dev/null, stderr on a pipe and a timeout of
    SETUP_TIMEOUT, after which it is killed (TimeoutError, with subprocess's message).

    The child keeps nothing of ours but ``passed``: our own descriptors are close-on-exec,
    and any other one this process inherited open (qumrand's sockets, TAPs, images) is
    closed for it, as subprocess's ``close_fds`` does. The signals Python ignores are reset
    to their default, as subprocess's ``restore_signals`` does. (Debian 12's glibc leaves
    its two internal signals, 32 and 33, ignored in a posix_spawn child; passt, a single
    thread, has no use for them.)
    """
    read_end, write_end = os.pipe()
    actions: list[tuple[int | str, ...]] = [
        (os.POSIX_SPAWN_DUP2, write_end, 2),  # first: the pipe may be on fd 0 or 1
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_RDWR, 0),
    ]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds() if fd != passed]
    try:
        try:
            pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions,
                                 setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))  # fmt: skip
        finally:
            os.close(write_end)
        return _wait_passt(pid, read_end, argv)
    finally:
        os.close(read_end)


def _wait_passt(pid: int, read_end: int, argv: list[str]) -> tuple[int, bytes]:
    """Read ``pid``'s stderr to its end (passt's background copy does not keep it), then
    reap it; kill it once SETUP_TIMEOUT has passed."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    stderr = bytearray()
    poller = select.poll()
    poller.register(read_end, POLLIN)
    at_end = False
    try:
        while (left := deadline - time.monotonic()) > 0:
            if at_end:  # stderr closed: it is exiting
                reaped, status = os.waitpid(pid, os.WNOHANG)
                if reaped:
                    return os.waitstatus_to_exitcode(status), bytes(stderr)
                time.sleep(min(left, 0.001))
            elif poller.poll(int(left * 1000) + 1):
                chunk = os.read(read_end, 1 << 16)
                stderr += chunk
                at_end = not chunk
        raise TimeoutError(f"Command '{argv}' timed out after {SETUP_TIMEOUT} seconds")
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


def _inherited_fds() -> list[int]:
    """The descriptors above stdio that an exec would pass on: those this process was given
    open by whoever started it (its own are close-on-exec)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    fds = []
    for fd in map(int, names):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            if fd > 2 and os.get_inheritable(fd):
                fds.append(fd)
    return fds


def _default_route(table: str = "/proc/net/route") -> bool:
    """Whether the host has an IPv4 default route (destination 00000000)."""
    try:
        with open(table) as f:
            return any(line.split()[1:2] == ["00000000"] for line in f.readlines()[1:])
    except OSError:
        return True  # cannot tell: let passt decide


def _passt_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines()
             if ln.strip() and "syslog" not in ln and "root" not in ln]  # fmt: skip
    return "; ".join(lines[-3:]) or "no message (see the system log)"


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
