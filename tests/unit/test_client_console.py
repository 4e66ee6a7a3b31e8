"""The console client against a real WebSocket server on a UNIX socket, fed by pipes and ptys."""

from __future__ import annotations

import contextlib
import os
import pty
import shutil
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, unix_serve

from qumran.client import DaemonNotRunning
from qumran.client.console import ConsoleExit, Replay, attach_console
from qumran.errors import InvalidState, NotFound

Script = Callable[[ServerConnection, "ConsoleServer"], None]


class ConsoleServer:
    """A stand-in for qumrand's console endpoint, running ``script`` per connection."""

    def __init__(self, path: str, script: Script) -> None:
        self.path = path
        self.script = script
        self.paths: list[str] = []
        self.received = bytearray()
        self.notes: list[Any] = []
        self.server = unix_serve(self._handle, path)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        self.paths.append(conn.request.path)
        self.script(conn, self)

    def collect(self, conn: ServerConnection) -> None:
        try:
            while True:
                data = conn.recv()
                self.received += data if isinstance(data, bytes) else data.encode()
        except ConnectionClosed:
            pass

    def wait_received(self, expected: bytes, timeout: float = 15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while bytes(self.received) != expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return bytes(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)


@pytest.fixture
def console_server() -> Iterator[Callable[[Script], ConsoleServer]]:
    folder = tempfile.mkdtemp(prefix="qw", dir="/tmp")
    servers: list[ConsoleServer] = []

    def start(script: Script) -> ConsoleServer:
        servers.append(ConsoleServer(os.path.join(folder, "c.sock"), script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pipes() -> Iterator[dict[str, int]]:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    fds = {"in_r": in_r, "in_w": in_w, "out_r": out_r, "out_w": out_w}
    yield fds
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)


def read_available(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


def greet_and_collect(conn: ServerConnection, server: ConsoleServer) -> None:
    # A client that typed ^] may have closed before the greeting goes out; what it sent
    # before closing is still there to collect.
    with contextlib.suppress(ConnectionClosed):
        conn.send(b"guest> ")
    server.collect(conn)


def test_keys_from_a_pipe_reach_the_guest_and_ctrl_bracket_leaves(
    console_server: Any, pipes: dict[str, int], capfd: pytest.CaptureFixture[str]
) -> None:
    server = console_server(greet_and_collect)
    os.write(pipes["in_w"], b"ls -l\nx\x1dnot sent")
    why = attach_console(server.path, "web 1", pipes["in_r"], pipes["out_w"])
    assert why is ConsoleExit.ESCAPE
    assert server.wait_received(b"ls -l\nx") == b"ls -l\nx"
    assert server.paths == ["/v1/vms/web%201/console?history=none"]
    assert "Connected to web 1 (escape character is ^])" in capfd.readouterr().err


def answer_slowly(conn: ServerConnection, server: ConsoleServer) -> None:
    data = conn.recv()
    server.received += data if isinstance(data, bytes) else data.encode()
    time.sleep(0.3)  # the client has long seen EOF on its stdin by now
    conn.send(b"po")  # the awaited text split over two frames
    conn.send(b"ng\r\n")
    server.collect(conn)


def test_eof_on_a_pipe_does_not_end_the_session_until_text_does(
    console_server: Any, pipes: dict[str, int]
) -> None:
    server = console_server(answer_slowly)
    os.write(pipes["in_w"], b"ping\n")
    os.close(pipes["in_w"])
    started = time.monotonic()
    why = attach_console(server.path, "vm", pipes["in_r"], pipes["out_w"], until=b"pong")
    assert why is ConsoleExit.UNTIL
    assert time.monotonic() - started >= 0.3
    assert read_available(pipes["out_r"]) == b"pong\r\n"
    assert server.wait_received(b"ping\n") == b"ping\n"


def replay_then_live(conn: ServerConnection, server: ConsoleServer) -> None:
    # ?history=separate: the recent output alone in the first message, then live output.
    with contextlib.suppress(ConnectionClosed):  # a client that matched the first has left
        conn.send(b"boot 1: READY\r\n")
        conn.send(b"boot 2: RE")
        conn.send(b"ADY\r\n")
    server.collect(conn)


@pytest.mark.parametrize(
    ("replay", "query"), [(Replay.SHOW, "?history=separate"), (Replay.MATCH, "")]
)
def test_what_the_recent_output_does(
    console_server: Any, pipes: dict[str, int], replay: Replay, query: str
) -> None:
    server = console_server(replay_then_live)
    why = attach_console(
        server.path, "vm", pipes["in_r"], pipes["out_w"], until=b"READY", replay=replay
    )
    assert why is ConsoleExit.UNTIL
    assert server.paths == [f"/v1/vms/vm/console{query}"]
    shown = read_available(pipes["out_r"])
    if replay is Replay.SHOW:  # shown, but --until waited for the live READY
        assert shown == b"boot 1: READY\r\nboot 2: READY\r\n"
    else:  # a VM this command started: its recent output counts
        assert shown == b"boot 1: READY\r\n"


def test_timeout_ends_a_quiet_session(console_server: Any, pipes: dict[str, int]) -> None:
    server = console_server(greet_and_collect)
    os.close(pipes["in_w"])
    started = time.monotonic()
    why = attach_console(server.path, "vm", pipes["in_r"], pipes["out_w"], timeout=0.3)
    assert why is ConsoleExit.TIMEOUT
    assert 0.3 <= time.monotonic() - started < 3


def hang_up(conn: ServerConnection, server: ConsoleServer) -> None:
    conn.send(b"Power down.\r\n")
    conn.close(code=1000, reason="the VM stopped")


def test_the_daemon_closing_the_stream_ends_the_session(
    console_server: Any, pipes: dict[str, int], capfd: pytest.CaptureFixture[str]
) -> None:
    server = console_server(hang_up)
    why = attach_console(server.path, "vm", pipes["in_r"], pipes["out_w"])
    assert why is ConsoleExit.CLOSED
    assert read_available(pipes["out_r"]) == b"Power down.\r\n"
    assert "Connection to vm closed" in capfd.readouterr().err


def test_a_refusal_close_code_becomes_our_error(console_server: Any, pipes: dict[str, int]) -> None:
    server = console_server(lambda conn, _: conn.close(code=4404, reason="no VM named 'x'"))
    with pytest.raises(NotFound, match="no VM named 'x'"):
        attach_console(server.path, "x", pipes["in_r"], pipes["out_w"], banner=False)


def test_missing_daemon(pipes: dict[str, int]) -> None:
    with pytest.raises(DaemonNotRunning, match="qumrand"):
        attach_console("/tmp/no-such-qumran.sock", "x", pipes["in_r"], pipes["out_w"])


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    master, slave = pty.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def type_when_raw(keys: list[bytes]) -> Script:
    """Type ``keys`` on the pty's master once the client has put the slave in raw mode."""

    def script(conn: ServerConnection, server: ConsoleServer) -> None:
        master, slave = server.notes[0]
        deadline = time.monotonic() + 3
        while termios.tcgetattr(slave)[3] & termios.ICANON and time.monotonic() < deadline:
            time.sleep(0.01)
        server.notes.append(termios.tcgetattr(slave)[3])  # lflag during the session
        for key in keys:
            os.write(master, key)
            time.sleep(0.05)
        server.collect(conn)

    return script


def test_a_tty_is_raw_during_the_session_and_restored_after(
    console_server: Any, terminal: tuple[int, int], pipes: dict[str, int]
) -> None:
    _master, slave = terminal
    before = termios.tcgetattr(slave)
    server = console_server(type_when_raw([b"\x03ab\r", b"\x1d"]))
    server.notes.append(terminal)
    why = attach_console(server.path, "vm", slave, pipes["out_w"])
    assert why is ConsoleExit.ESCAPE
    # Ctrl-C is a key for the guest, not a signal for us; Enter stays a carriage return.
    assert server.wait_received(b"\x03ab\r") == b"\x03ab\r"
    lflag = server.notes[1]
    assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)
    assert termios.tcgetattr(slave) == before


def test_a_tty_is_restored_when_the_session_fails(
    console_server: Any, terminal: tuple[int, int], pipes: dict[str, int]
) -> None:
    _master, slave = terminal
    before = termios.tcgetattr(slave)
    server = console_server(lambda conn, _: conn.close(code=4409, reason="VM 'x' is shut off"))
    with pytest.raises(InvalidState, match="shut off"):
        attach_console(server.path, "x", slave, pipes["out_w"])
    assert termios.tcgetattr(slave) == before
