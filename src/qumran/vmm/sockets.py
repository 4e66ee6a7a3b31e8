"""Listening UNIX sockets: bound by path, or inherited from qumrand as ``fd=N``.

A socket file left by a killed qumran-vmm (SIGKILL leaves no chance to clean up) is
removed if nobody answers on it; a live one is an error, so two VMs never share a path.

Under qumrand the sockets come ready-made: the daemon binds them in a directory only it
can write and passes them open (``fd=N``), so the VM's owner never names a path the
daemon later connects to (docs/security.md).
"""

from __future__ import annotations

import _socket
import contextlib
import os
import stat

from qumran.vmm.errors import VmmError


class SocketInUse(VmmError):
    code = "socket-in-use"


def listen_unix_socket(where: str, backlog: int = 16) -> _socket.socket:
    """``fd=N`` (an inherited socket) or a path to bind."""
    if where.startswith("fd="):
        return adopt_socket(where[3:], backlog)
    return bind_unix_socket(where, backlog)


def remove_socket_file(where: str) -> None:
    """Unlink a socket this process bound; an inherited one's path belongs to whoever
    bound it."""
    if not where.startswith("fd="):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where)


def adopt_socket(number: str, backlog: int = 16) -> _socket.socket:
    """A listening UNIX socket inherited as fd ``number``.

    listen() is called again: besides being harmless on a listening socket, it makes the
    kernel record this process as the credentials (SO_PEERCRED) every later client sees,
    which is how qumrand tells, on re-attach, that the VM's own process answers.
    """
    if not number.isdigit():
        raise VmmError(f"fd={number}: not a file descriptor number")
    try:
        sock = _socket.socket(fileno=int(number))
    except OSError as exc:
        raise VmmError(f"fd={number}: {exc.strerror}") from None
    if sock.family != _socket.AF_UNIX or sock.type != _socket.SOCK_STREAM:
        sock.detach()
        raise VmmError(f"fd={number} is not a UNIX stream socket")
    try:
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.detach()
        raise VmmError(f"fd={number}: cannot listen: {exc.strerror}") from None
    return sock


def bind_unix_socket(path: str, backlog: int = 16) -> _socket.socket:
    """A non-blocking listening socket (``_socket``'s: ``socket.py`` costs every VMM process
    resident memory for its enum classes; nothing here needs them)."""
    _remove_stale(path)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise VmmError(f"cannot listen on {path}: {exc.strerror}") from None
    return sock


def _remove_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUse(f"{path} exists and is not a socket")
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: its owner is gone
        return
    finally:
        probe.close()
    raise SocketInUse(f"{path} is in use by another process")
