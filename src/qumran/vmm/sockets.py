"""Listening UNIX sockets that do not trip over a stale socket file.

A socket file left by a killed qumran-vmm (SIGKILL leaves no chance to clean up) is
removed if nobody answers on it; a live one is an error, so two VMs never share a path.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from qumran.vmm.errors import VmmError


class SocketInUse(VmmError):
    code = "socket-in-use"


def bind_unix_socket(path: str, backlog: int = 16) -> socket.socket:
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: its owner is gone
        return
    finally:
        probe.close()
    raise SocketInUse(f"{path} is in use by another process")
