"""passt, the process and its socket (``--net passt``; the virtio-net device on it is
passt.py).

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
"""

from __future__ import annotations

import _socket
import contextlib
import fcntl
import os
import select
import signal
import time

from qumran.record import Record
from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

log = get_logger(__name__)

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
# Our socket's send buffer (the kernel doubles it). It must stay above 73 KB, so that the
# kernel queues a frame in at most two pieces (see passt.PasstNet._transmit), and below
# passt's 8 MB read buffer, so that passt's reads always end on a piece's end.
SNDBUF = 1 << 21


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
    poller.register(read_end, select.POLLIN)
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
