"""The control socket: JSON lines over a UNIX socket.

Request ``{"cmd": "status"|"pause"|"resume"|"shutdown"|"quit"|"stats", "id": any?}``;
reply ``{"ok": true, ...}`` or ``{"ok": false, "error": {"code", "message"}}``, echoing
``id`` when given. ``shutdown`` presses the ACPI power button (the guest decides);
``quit`` stops the VM at once, like QEMU's ``quit``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qumran.errors import InvalidArgument, QumranError
from qumran.vmm.machine import Machine
from qumran.vmm.sockets import bind_unix_socket

if TYPE_CHECKING:  # asyncio is imported once the guest runs (start-up time)
    import asyncio

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024


class UnknownCommand(InvalidArgument):
    code = "unknown-command"


class ControlServer:
    def __init__(self, path: str, machine: Machine, on_quit: Callable[[], None]) -> None:
        self.path = path
        self._machine = machine
        self._on_quit = on_quit
        self._sock = bind_unix_socket(path)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        import asyncio

        self._server = await asyncio.start_unix_server(
            self._client, sock=self._sock, limit=MAX_LINE
        )

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import asyncio

        self._writers.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._send(writer, _error("bad-request", "request line too long"))
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                reply, quit_after = self.handle_line(line)
                await self._send(writer, reply)
                if quit_after:
                    self._on_quit()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()

    def handle_line(self, line: bytes) -> tuple[dict[str, Any], bool]:
        """One request -> (reply, whether to quit after sending it)."""
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error("bad-request", f"not JSON: {exc}"), False
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return _error("bad-request", 'a request is an object with a "cmd" string'), False
        try:
            reply = {"ok": True, **self._dispatch(request["cmd"])}
        except QumranError as exc:
            reply = {"ok": False, "error": exc.to_dict()}
        except Exception as exc:  # a bug must not take the control socket down
            log.debug("control command failed", exc_info=True)
            reply = _error("internal", f"{type(exc).__name__}: {exc}")
        if "id" in request:
            reply["id"] = request["id"]
        return reply, request["cmd"] == "quit" and reply["ok"]

    def _dispatch(self, cmd: str) -> dict[str, Any]:
        machine = self._machine
        match cmd:
            case "status":
                return machine.status()
            case "stats":
                return machine.stats()
            case "pause":
                machine.pause()
                return {"state": machine.state.value}
            case "resume":
                machine.resume()
                return {"state": machine.state.value}
            case "shutdown":
                machine.power_button()
                return {"state": machine.state.value}
            case "quit":
                return {}
            case _:
                raise UnknownCommand(
                    f"unknown command {cmd!r}; try status, pause, resume, shutdown, quit, stats"
                )

    def close(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
        else:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}
