"""The control socket: JSON lines over a UNIX socket.

Request ``{"cmd": "status"|"pause"|"resume"|"shutdown"|"reset"|"quit"|"stats", "id": any?}``,
or ``{"cmd": "snapshot", "path": "/abs/file"}`` (the guest is paused while it is written,
then runs again if it was running; ``qumran-vmm --restore FILE`` resumes it), or
``{"cmd": "snapshot", "fd": true}`` with an open file sent along (SCM_RIGHTS): the
snapshot is written into that file, which whoever sent it renames into place (qumrand's
managed save, in a folder the VMM cannot open);
reply ``{"ok": true, ...}`` or ``{"ok": false, "error": {"code", "message"}}``, echoing
``id`` when given. ``shutdown`` presses the ACPI power button (the guest decides);
``reset`` is the reset button: the guest starts again from its kernel at once, in the same
process (a paused VM stays paused), like QEMU's ``system_reset``; ``quit`` stops the VM at
once, like QEMU's ``quit``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from qumran.errors import InvalidArgument, QumranError
from qumran.vmm.log import get_logger
from qumran.vmm.machine import Machine
from qumran.vmm.mainloop import Listener, MainLoop, Peer
from qumran.vmm.sockets import listen_unix_socket, remove_socket_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from _socket import socket
    from typing import Any

log = get_logger(__name__)

MAX_LINE = 64 * 1024


class UnknownCommand(InvalidArgument):
    code = "unknown-command"


class ControlServer:
    def __init__(self, path: str, machine: Machine, on_quit: Callable[[], None]) -> None:
        self.path = path
        self._machine = machine
        self._on_quit = on_quit
        self._sock = listen_unix_socket(path)
        self._listener: Listener | None = None
        self._loop: MainLoop | None = None
        self._clients: dict[Peer, bytearray] = {}  # each client's unfinished request line

    def start(self, loop: MainLoop) -> None:
        self._loop = loop
        self._listener = Listener(loop, self._sock, self._client)

    def _client(self, conn: socket) -> None:
        assert self._loop is not None
        peer = Peer(self._loop, conn, self._received, self._gone, max_fds=1)
        self._clients[peer] = bytearray()

    def _gone(self, peer: Peer) -> None:
        self._clients.pop(peer, None)

    def _received(self, peer: Peer, data: bytes) -> None:
        """Answer every complete line in order; requests are answered one at a time."""
        pending = self._clients.get(peer)
        if pending is None:
            return
        pending += data
        while not peer.closed:
            end = pending.find(b"\n")
            if end < 0:
                if len(pending) > MAX_LINE:
                    _send(peer, _error("bad-request", "request line too long"))
                    peer.close()
                return
            line = bytes(pending[: end + 1])
            del pending[: end + 1]
            if not line.strip():
                continue
            reply, quit_after = self.handle_line(line, peer)
            _send(peer, reply)
            if quit_after:
                self._on_quit()

    def handle_line(self, line: bytes, peer: Peer | None = None) -> tuple[dict[str, Any], bool]:
        """One request -> (reply, whether to quit after sending it)."""
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error("bad-request", f"not JSON: {exc}"), False
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return _error("bad-request", 'a request is an object with a "cmd" string'), False
        try:
            reply = {"ok": True, **self._dispatch(request["cmd"], request, peer)}
        except QumranError as exc:
            reply = {"ok": False, "error": exc.to_dict()}
        except Exception as exc:  # a bug must not take the control socket down
            log.debug("control command failed", exc_info=True)
            reply = _error("internal", f"{type(exc).__name__}: {exc}")
        if "id" in request:
            reply["id"] = request["id"]
        return reply, request["cmd"] == "quit" and reply["ok"]

    def _dispatch(self, cmd: str, request: dict[str, Any], peer: Peer | None) -> dict[str, Any]:
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
            case "reset":
                machine.reset()
                return {"state": machine.state.value, "reboots": machine.reboots}
            case "snapshot":
                if request.get("fd") is True:
                    fd = peer.take_fd() if peer is not None else None
                    if fd is None:
                        raise InvalidArgument('snapshot "fd": no open file came with the request')
                    try:
                        return {**machine.snapshot(fd), "state": machine.state.value}
                    finally:
                        os.close(fd)
                path = request.get("path")
                if not isinstance(path, str) or not path:
                    raise InvalidArgument('snapshot needs "path": the file to write')
                return {**machine.snapshot(path), "state": machine.state.value}
            case "quit":
                return {}
            case _:
                raise UnknownCommand(
                    f"unknown command {cmd!r};"
                    " try status, pause, resume, shutdown, reset, quit, stats, snapshot"
                )

    def close(self) -> None:
        for peer in list(self._clients):
            peer.close()
        if self._listener is not None:
            self._listener.close()
        else:
            self._sock.close()
        remove_socket_file(self.path)


def _send(peer: Peer, reply: dict[str, Any]) -> None:
    peer.send(json.dumps(reply).encode() + b"\n")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}
