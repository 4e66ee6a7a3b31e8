"""A client for qumran-vmm's control socket (JSON lines; see qumran.vmm.control)."""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import socket
from typing import Any

from qumran.errors import HypervisorError, from_code


class VmmControl:
    def __init__(self, name: str) -> None:
        self.name = name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()  # one request in flight: replies come in order
        self._sock: socket.socket | None = None

    async def connect(self, sock: socket.socket | str) -> None:
        if isinstance(sock, str):
            self._reader, self._writer = await asyncio.open_unix_connection(sock)
            self._sock = None
        else:
            self._reader, self._writer = await asyncio.open_unix_connection(sock=sock)
            self._sock = sock  # kept: a file is sent on it directly (sendmsg)

    async def call(
        self, cmd: str, args: dict[str, Any] | None = None, *, fd: int | None = None
    ) -> dict[str, Any]:
        """One request; ``fd``: an open file sent along with it (SCM_RIGHTS)."""
        if self._reader is None or self._writer is None:
            raise HypervisorError(f"VM {self.name}: not connected to qumran-vmm")
        line = json.dumps({"cmd": cmd, **(args or {})}).encode() + b"\n"
        async with self._lock:
            try:
                if fd is None:
                    self._writer.write(line)
                else:
                    await self._send_with_fd(line, fd)
                await self._writer.drain()
                line = await self._reader.readline()
            except OSError as exc:
                raise HypervisorError(f"VM {self.name}: control socket: {exc}") from None
        if not line:
            raise HypervisorError(f"VM {self.name}: qumran-vmm closed its control socket")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise from_code(str(error.get("code")), f"VM {self.name}: {error.get('message')}")
        return reply

    async def _send_with_fd(self, line: bytes, fd: int) -> None:
        """The line and the file in one message, on the socket itself: the transport's
        buffer is empty here (every earlier write was drained under the lock)."""
        if self._sock is None:
            raise HypervisorError(f"VM {self.name}: cannot send a file on this connection")
        sent = self._sock.sendmsg([line], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                            array.array("i", [fd]).tobytes())])  # fmt: skip
        if sent < len(line):  # the rest of the line, without the file
            assert self._writer is not None
            self._writer.write(line[sent:])

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = self._reader = None
