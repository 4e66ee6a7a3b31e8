"""Who is on the other end of the socket: SO_PEERCRED, attached to every request.

uvicorn builds each request's ASGI scope from its protocol object; we subclass the HTTP
protocol so that, when a connection is made, the kernel-verified uid, gid and pid of the
peer go into the connection's state (``request.state.peer``). The WebSocket protocol an
upgraded connection switches to inherits that state. The uid is also the key under
which the connection counts against its user's share (``qumran.daemon.connections``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Hashable
from typing import Any

from qumran.daemon.connections import BoundedHTTP, Slots, protocols
from qumran.daemon.limits import Limits
from qumran.daemon.manager import Caller

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


def peer_credentials(sock: socket.socket) -> Caller:
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(data)
    return Caller(uid=uid, gid=gid, pid=pid)


class PeerCredProtocol(BoundedHTTP):
    def identify(self, transport: asyncio.Transport) -> Hashable:
        """The peer's uid, which is also the caller every request on it acts as."""
        sock: Any = transport.get_extra_info("socket")
        if sock is None or sock.family != socket.AF_UNIX:
            return super().identify(transport)
        peer = peer_credentials(sock)
        self.app_state = {**self.app_state, "peer": peer}
        return f"uid {peer.uid}"


def api_protocols(limits: Limits) -> dict[str, Any]:
    """uvicorn.Config options for the UNIX API socket: the caller's uid, its share, timers."""
    privileged = {"uid 0", f"uid {os.geteuid()}"}

    def cap(key: Hashable) -> int:
        return limits.privileged if key in privileged else limits.per_uid

    return protocols(PeerCredProtocol, Slots(cap), limits.header_timeout)
