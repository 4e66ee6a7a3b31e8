"""Listening UNIX sockets that do not trip over a stale socket file.

A socket file left by a killed qumran-vmm (SIGKILL leaves no chance to clean up) is
removed if nobody answers on it; a live one is an error, so two VMs never share a path.
"""

from __future__ import annotations

import _socket
import contextlib
import os
import stat

from qumran.vmm.errors import VmmError


class SocketInUse(VmmError):
    code = "socket-in-use"


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
