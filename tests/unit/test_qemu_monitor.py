"""The QMP session: events become GuestEvents, failures become Qumran errors, and a
monitor whose QEMU vanishes never raises into the event loop. Run against a small QMP
server written here from the QMP specification (QEMU docs/interop/qmp-spec.rst)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qumran.drivers.base import GuestEvent
from qumran.drivers.qemu.monitor import QmpMonitor, translate
from qumran.errors import HypervisorError

GREETING = {
    "QMP": {
        "version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
        "capabilities": ["oob"],
    }
}


class QmpServer:
    """Answers commands from ``replies`` (a dict value, or an error string) and sends
    events on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.replies: dict[str, Any] = {"query-status": {"status": "running", "running": True}}
        self.received: list[str] = []
        self._clients: list[asyncio.StreamWriter] = []
        self._handlers: list[asyncio.Task[None]] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.append(writer)
        self._handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        self._send(writer, GREETING)
        # QMP is a stream of JSON objects, not of lines: decode objects as they complete.
        buffer, decoder = "", json.JSONDecoder()
        with contextlib.suppress(OSError):
            while chunk := await reader.read(4096):
                buffer += chunk.decode()
                while buffer.strip():
                    try:
                        request, end = decoder.raw_decode(buffer.lstrip())
                    except ValueError:
                        break
                    buffer = buffer.lstrip()[end:]
                    self._answer(writer, request)

    def _answer(self, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        command = request["execute"]
        self.received.append(command)
        reply = self.replies.get(command, {})
        if isinstance(reply, str):
            answer: dict[str, Any] = {"error": {"class": "GenericError", "desc": reply}}
        else:
            answer = {"return": reply}
        if "id" in request:
            answer["id"] = request["id"]
        self._send(writer, answer)

    def _send(self, writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        writer.write(json.dumps(message).encode() + b"\r\n")

    def event(self, name: str, **data: Any) -> None:
        message = {"event": name, "data": data, "timestamp": {"seconds": 1, "microseconds": 2}}
        for writer in self._clients:
            self._send(writer, message)

    async def hang_up(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._clients:
            writer.close()
        self._clients.clear()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        self._handlers.clear()


Events = list[tuple[GuestEvent, str]]
Body = Callable[[QmpServer, QmpMonitor, Events], Awaitable[None]]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="q-mon-", dir="/tmp"))  # UNIX socket paths are short
    yield path
    shutil.rmtree(path)


def run_session(short_dir: Path, body: Body) -> list[dict[str, Any]]:
    """Run ``body`` against a connected monitor; return what reached the loop's
    exception handler (must stay empty)."""
    unhandled: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unhandled.append(ctx))
        server = QmpServer(short_dir / "qmp.sock")
        await server.start()
        events: Events = []
        monitor = QmpMonitor("t", lambda e, d: events.append((e, d)))
        await monitor.connect(str(server.path))
        try:
            await body(server, monitor, events)
        finally:
            await monitor.close()
            await server.hang_up()

    asyncio.run(main())
    return unhandled


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"}},
         (GuestEvent.SHUTDOWN, "guest-shutdown")),
        ({"event": "SHUTDOWN", "data": {"guest": False, "reason": "host-signal"}}, None),
        ({"event": "RESET", "data": {"guest": True, "reason": "guest-reset"}},
         (GuestEvent.RESET, "guest-reset")),
        ({"event": "RESET", "data": {"guest": False, "reason": "host-qmp-system-reset"}}, None),
        ({"event": "STOP"}, (GuestEvent.STOP, "")),
        ({"event": "RESUME"}, (GuestEvent.RESUME, "")),
        ({"event": "GUEST_PANICKED", "data": {"action": "pause"}},
         (GuestEvent.CRASH, "guest panicked (action: pause)")),
        ({"event": "POWERDOWN"}, None),
        ({"event": "NIC_RX_FILTER_CHANGED", "data": {"path": "/x"}}, None),
    ],
)  # fmt: skip
def test_translate(message: dict[str, Any], expected: tuple[GuestEvent, str] | None) -> None:
    assert translate(message) == expected


def test_commands_and_their_replies(short_dir: Path) -> None:
    async def body(server: QmpServer, monitor: QmpMonitor, events: Events) -> None:
        assert await monitor.execute("system_powerdown") == {}
        assert await monitor.status() == "running"
        server.replies["query-status"] = {"status": "paused", "running": False}
        assert await monitor.status() == "paused"
        assert server.received == [
            "qmp_capabilities", "system_powerdown", "query-status", "query-status",
        ]  # fmt: skip

    assert run_session(short_dir, body) == []


def test_a_refused_command_is_a_hypervisor_error(short_dir: Path) -> None:
    async def body(server: QmpServer, monitor: QmpMonitor, events: Events) -> None:
        server.replies["cont"] = "Resetting the Virtual Machine is required"
        with pytest.raises(HypervisorError, match="QEMU refused cont for VM t: Resetting"):
            await monitor.execute("cont")

    assert run_session(short_dir, body) == []


def test_events_reach_the_sink_in_order(short_dir: Path) -> None:
    async def body(server: QmpServer, monitor: QmpMonitor, events: Events) -> None:
        server.event("STOP")
        server.event("RESUME")
        server.event("RESET", guest=True, reason="guest-reset")
        server.event("SHUTDOWN", guest=True, reason="guest-shutdown")
        await until(lambda: len(events) == 4)
        assert events == [
            (GuestEvent.STOP, ""),
            (GuestEvent.RESUME, ""),
            (GuestEvent.RESET, "guest-reset"),
            (GuestEvent.SHUTDOWN, "guest-shutdown"),
        ]

    assert run_session(short_dir, body) == []


def test_a_stop_on_internal_error_is_a_crash(short_dir: Path) -> None:
    async def body(server: QmpServer, monitor: QmpMonitor, events: Events) -> None:
        server.replies["query-status"] = {"status": "internal-error", "running": False}
        server.event("STOP")
        await until(lambda: len(events) == 2)
        assert events == [(GuestEvent.STOP, ""), (GuestEvent.CRASH, "internal-error")]

    assert run_session(short_dir, body) == []


def test_a_failing_sink_does_not_stop_the_events(short_dir: Path) -> None:
    seen: list[GuestEvent] = []

    async def body(server: QmpServer, monitor: QmpMonitor, events: Events) -> None:
        def sink(event: GuestEvent, detail: str) -> None:
            seen.append(event)
            raise RuntimeError("daemon bug")

        monitor._sink = sink
        server.event("RESET", guest=True, reason="guest-reset")
        server.event("RESUME")
        await until(lambda: len(seen) == 2)

    assert run_session(short_dir, body) == []
    assert seen == [GuestEvent.RESET, GuestEvent.RESUME]


def test_a_vanished_qemu_ends_the_session_quietly(short_dir: Path) -> None:
    async def body(server: QmpServer, monitor: QmpMonitor, events: Events) -> None:
        await server.hang_up()
        await until(lambda: not monitor.connected)
        with pytest.raises(HypervisorError, match="disconnected"):
            await monitor.execute("system_reset")
        await asyncio.sleep(0.05)  # let any stray task finish and report

    assert run_session(short_dir, body) == []


def test_connecting_to_nothing_is_a_hypervisor_error(short_dir: Path) -> None:
    async def main() -> None:
        monitor = QmpMonitor("t", lambda e, d: None)
        with pytest.raises(HypervisorError, match="cannot open the QMP monitor of VM t"):
            await monitor.connect(str(short_dir / "absent.sock"))

    asyncio.run(main())
