"""Who is on the other end of the socket: SO_PEERCRED, attached to every request.

uvicorn builds each request's ASGI scope from its protocol object; we subclass the HTTP
protocol so that, when a connection is made, the kernel-verified uid, gid and pid of the
peer go into the connection's state (``request.state.peer``). The WebSocket protocol an
upgraded connection switches to inherits that state.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from qumran.daemon.manager import Caller

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


def peer_credentials(sock: socket.socket) -> Caller:
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(data)
    return Caller(uid=uid, gid=gid, pid=pid)


class PeerCredProtocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock: Any = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            self.app_state = {**self.app_state, "peer": peer_credentials(sock)}
