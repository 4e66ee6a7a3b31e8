"""qumrand's listening sockets and folders, made ready before anything else starts.

The API socket is bound here, or arrives from systemd or from the qumrand before a
restart (``qumran.daemon.activation``); who bound it decides who removes its path. The
web manager's TCP socket likewise. A user without a runtime folder gets a private one in
/tmp, checked before use. Each failure is one :class:`QumranError` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from qumran.config.paths import is_fallback
from qumran.daemon import config
from qumran.errors import QumranError

log = logging.getLogger("qumran.daemon")

# How long, on a restart, a connection accepted but still silent gets to send its first
# request before the old qumrand lets go of it (uvicorn would close it unanswered at once;
# the libvirt server likewise). Our clients send at once; this bounds what a client that
# never sends can hold up.
FIRST_REQUEST_GRACE = 1.0
# Loop steps from asyncio's accept() of a connection to its protocol's connection_made (the
# _accept_connection2 task's first step, then the transport's call_soon), and for a stream
# server on to its handler's first step (a task connection_made creates). One spare.
ACCEPT_STEPS = 4


async def stop_accepting(server: asyncio.Server) -> None:
    """Accept no more on ``server``, let every connection it has accepted reach its
    protocol, then close it (and its sockets: a restart keeps duplicates listening, and
    what is in their backlog waits there for the next qumrand).

    Not ``server.close()`` first: asyncio accepts eagerly, up to the backlog at a time, and
    makes each connection's transport a step later; a transport made once its server is
    closed fails an assertion (``Server._attach``), and asyncio drops that connection
    without a word (it reports the error only in debug mode). Its socket stays open, its
    request unread, until the exec or the exit closes it, and the client is reset.
    """
    loop = asyncio.get_running_loop()
    for sock in server.sockets:
        loop.remove_reader(sock.fileno())
    for _ in range(ACCEPT_STEPS):
        await asyncio.sleep(0)
    server.close()


def bind_socket(path: str) -> socket.socket:
    """Bind the API socket; refuse if another daemon answers on it, else clear a stale one."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    except OSError as exc:
        raise _socket_problem(path, exc) from None
    else:
        raise QumranError(
            f"another qumrand is already listening on {path}; stop it first, "
            "or give this one another --socket"
        )
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        sock.bind(path)
        os.chmod(path, 0o666)  # anyone may connect; SO_PEERCRED decides what they may do
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise _socket_problem(path, exc) from None
    return sock


def _socket_problem(path: str, exc: OSError) -> QumranError:
    return QumranError(
        f"cannot listen on {path}: {exc.strerror or exc}; "
        "choose another path with --socket (or QUMRAN_SOCKET)"
    )


def prepare_run_dir(run: Path) -> None:
    """The run directory must exist and be ours to write: each VM's files go below it."""
    if is_fallback(run):
        prepare_private_dir(run)
        return
    try:
        run.mkdir(parents=True, exist_ok=True, mode=0o755)
        if not os.access(run, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        raise QumranError(
            f"cannot use the run directory {run}: {exc.strerror or exc}; make it writable "
            "by the daemon's user or choose another with --run-dir"
        ) from None


def prepare_private_dir(path: Path) -> None:
    """/tmp/qumran-UID, for a user without a runtime folder: made 0700, and used only if
    it is a folder of ours -- anyone can create a name in /tmp first (a squatter's folder
    or symlink would get our sockets, or our files written where it points)."""
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise QumranError(
            f"cannot use {path} as the runtime folder: {why}; remove it, or set "
            "XDG_RUNTIME_DIR to a folder of yours"
        ) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise QumranError(
                f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): another "
                "user made it first; remove it, or set XDG_RUNTIME_DIR to a folder of yours"
            )
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)  # ours: close it to others before putting sockets in it
    finally:
        os.close(fd)


def bind_web(address: str) -> socket.socket:
    """Bind the web manager's TCP address (before anything else, so a busy port fails fast)."""
    try:
        host, port = config.parse_address(address)
    except ValueError as exc:
        raise QumranError(f"the web manager's address: {exc}") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise QumranError(
            f"cannot serve the web manager on {address}: {exc.strerror}; "
            "choose another address with --web HOST:PORT or in the settings file ([web] address)"
        ) from None
    sock.listen(128)
    return sock


def web_listener(address: str | None, passed: socket.socket | None) -> socket.socket | None:
    """The web manager's socket: the one the last qumrand passed on if it is still at the
    configured address, else a new one (or none, the web manager being off)."""
    if passed is not None:
        if address is not None and _same_address(passed, address):
            return passed
        passed.close()
    return bind_web(address) if address else None


def _same_address(sock: socket.socket, address: str) -> bool:
    host, port = config.parse_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return sock.getsockname()[:2] in [info[4][:2] for info in infos]


@dataclass
class Listening:
    """The API socket and where it came from; on a restart, the sockets handed on."""

    sock: socket.socket
    path: str
    source: str  # "qumrand": bound here (unlinked at the end); "systemd": the socket unit's
    web: socket.socket | None = None
    handover: dict[str, socket.socket] | None = None  # set by SIGHUP: restart with these


def api_listener(path: str, passed: socket.socket | None, source: str) -> Listening:
    if passed is not None:
        name = passed.getsockname()
        bound = name if isinstance(name, str) else name.decode(errors="replace")
        if bound != path:
            log.info("listening on %s, the socket %s passed (not on %s)", bound, source, path)
        return Listening(passed, bound, source)
    if is_fallback(Path(path).parent):
        prepare_private_dir(Path(path).parent)
    return Listening(bind_socket(path), path, "qumrand")


def let_go(listening: Listening) -> None:
    """At the end: close the API socket; unlink it if we bound it and nobody takes it on."""
    listening.sock.close()
    if listening.source == "qumrand" and listening.handover is None:
        _unlink(listening.path)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
