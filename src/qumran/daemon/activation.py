"""Listening sockets handed to qumrand, and qumrand handing them on to itself.

Two ways a listening socket arrives, one protocol (sd_listen_fds(3)): the environment
says ``LISTEN_PID`` (must be ours), ``LISTEN_FDS`` (how many, from fd 3 up) and, maybe,
``LISTEN_FDNAMES`` (colon-separated names). systemd's ``qumrand.socket`` passes the API
socket that way; and qumrand restarting itself (SIGHUP, ``qumran daemon restart``)
re-executes itself with its own listening sockets passed the same way, named ``api``,
``web`` and ``libvirt``. A listening socket never closes in between, so a client
connecting during the restart waits in the kernel's backlog for the new process instead
of being refused.

sd_notify(3) is the other half of living under systemd (``Type=notify``): READY=1 once
the socket is served, RELOADING=1 before a restart, STOPPING=1 before leaving.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import time

from qumran.errors import QumranError

log = logging.getLogger(__name__)

FIRST_FD = 3  # SD_LISTEN_FDS_START
API = "api"
WEB = "web"
LIBVIRT = "libvirt"  # libvirt's protocol's socket (docs/libvirt.md)
# Not for VM processes: qumrand's children must not think these were meant for them.
_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
SOURCE_VAR = "QUMRAN_SOCKET_SOURCE"  # who first bound the API socket: systemd or qumrand


def listen_fds() -> tuple[dict[str, socket.socket], str]:
    """The listening sockets passed to this process, by name, and who first bound the API
    socket ("systemd", or "qumrand" when handed on by a restart); ({}, "") for none.

    The API socket is the one named ``api``, else the first not named ``web`` (a socket
    unit names its socket after itself unless FileDescriptorName= says otherwise). The
    environment variables are removed either way.
    """
    env = {name: os.environ.pop(name, None) for name in _VARS}
    source = os.environ.pop(SOURCE_VAR, None) or "systemd"
    if env["LISTEN_PID"] is None or env["LISTEN_FDS"] is None:
        return {}, ""
    if env["LISTEN_PID"] != str(os.getpid()):
        return {}, ""  # meant for another process (a parent that exec'd us without unsetting)
    try:
        count = int(env["LISTEN_FDS"])
    except ValueError:
        raise QumranError(f"LISTEN_FDS={env['LISTEN_FDS']!r} is not a number") from None
    names = (env["LISTEN_FDNAMES"] or "").split(":")
    named = [names[i] if i < len(names) else "" for i in range(count)]
    api = (
        named.index(API)
        if API in named
        else next((i for i, name in enumerate(named) if name != WEB), None)
    )
    found: dict[str, socket.socket] = {}
    for index, name in enumerate(named):
        fd = FIRST_FD + index
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        key = API if index == api else name or f"fd{fd}"
        if key in found:
            os.close(fd)
            continue
        found[key] = _listening(fd, key)
    return found, source


def _listening(fd: int, name: str) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:
        raise QumranError(
            f"the socket passed as fd {fd} ({name}) cannot be used: {exc.strerror}"
        ) from None
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise QumranError(
            f"fd {fd} ({name}) is not a listening stream socket: a socket unit for qumrand "
            "needs ListenStream= (see contrib/systemd/qumrand.socket)"
        )
    if name == API and sock.family != socket.AF_UNIX:
        sock.detach()
        raise QumranError(f"fd {fd}, the API socket, is not a UNIX socket: qumrand's API is")
    return sock


def reexec(sockets: dict[str, socket.socket], source: str) -> None:
    """Replace this process with a fresh qumrand, the same pid, holding ``sockets``.

    Only returns if the exec fails. Every other descriptor is close-on-exec (Python's
    default), so the new daemon starts with these alone.
    """
    # Out of the way first: the targets 3, 4, ... may be taken by the very fds we pass.
    high = [fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 64) for sock in sockets.values()]
    for index, fd in enumerate(high):
        os.dup2(fd, FIRST_FD + index, inheritable=True)
        os.close(fd)
    env = dict(os.environ)
    env.update(
        LISTEN_PID=str(os.getpid()),
        LISTEN_FDS=str(len(sockets)),
        LISTEN_FDNAMES=":".join(sockets),
    )
    env[SOURCE_VAR] = source
    notify_socket = _notify_socket
    if notify_socket is not None:
        env["NOTIFY_SOCKET"] = notify_socket
    argv = list(sys.orig_argv)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # kept across exec, till the new one handles it
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


# --- sd_notify --------------------------------------------------------------------------

# Taken out of the environment at start-up (VM processes must not inherit it) and kept
# here for the notifications and for the next qumrand after a restart.
_notify_socket: str | None = None


def take_notify_socket() -> None:
    global _notify_socket
    _notify_socket = os.environ.pop("NOTIFY_SOCKET", None) or _notify_socket


def under_systemd_service() -> str | None:
    """The systemd unit this process runs in (qumrand.service), or None.

    systemd sets INVOCATION_ID for the processes of its units; /proc/self/cgroup names
    the unit. A user's manager puts its units under user@UID.service/app.slice/.
    """
    if "INVOCATION_ID" not in os.environ:
        return None
    try:
        with open("/proc/self/cgroup") as f:
            cgroup = f.read().strip().rpartition(":")[2]
    except OSError:
        return None
    unit = cgroup.rstrip("/").rpartition("/")[2]
    return unit if unit.endswith(".service") else None


def notify(state: str) -> None:
    """Tell systemd ``state`` (READY=1, RELOADING=1, STOPPING=1); nothing without systemd."""
    path = _notify_socket
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path  # "@": an abstract socket
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.sendall(state.encode())


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it beside (MONOTONIC_USEC=)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
