"""A client for qumran-vmm's control socket (JSON lines; see qumran.vmm.control)."""

from __future__ import annotations

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

    async def connect(self, sock: socket.socket | str) -> None:
        if isinstance(sock, str):
            self._reader, self._writer = await asyncio.open_unix_connection(sock)
        else:
            self._reader, self._writer = await asyncio.open_unix_connection(sock=sock)

    async def call(self, cmd: str) -> dict[str, Any]:
        if self._reader is None or self._writer is None:
            raise HypervisorError(f"VM {self.name}: not connected to qumran-vmm")
        async with self._lock:
            try:
                self._writer.write(json.dumps({"cmd": cmd}).encode() + b"\n")
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

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = self._reader = None
