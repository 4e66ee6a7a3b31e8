"""The VMM's main loop with real UNIX sockets: control requests, the socket console,
calls posted from other threads. The loop runs on a thread of the test; nothing is faked
but the machine, which the requests used here never reach."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qumran.vmm.console import SocketConsole
from qumran.vmm.control import MAX_LINE, ControlServer
from qumran.vmm.mainloop import MainLoop


class LoopThread:
    def __init__(self) -> None:
        self.loop = MainLoop()
        self.status: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.status = self.loop.run()

    def start(self) -> None:
        self._thread.start()

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread and wait for it."""
        done = threading.Event()

        def wrapped() -> None:
            fn()
            done.set()

        self.loop.call_soon_threadsafe(wrapped)
        assert done.wait(5)

    def stop(self, status: int = 0) -> int | None:
        self.loop.call_soon_threadsafe(lambda: self.loop.stop(status))
        self._thread.join(5)
        return self.status


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    lt.start()
    yield lt
    lt.stop()
    lt.loop.close()


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def read_lines(s: socket.socket, count: int) -> list[dict[str, object]]:
    buf = b""
    while buf.count(b"\n") < count:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


def test_a_call_from_another_thread_wakes_the_loop_and_stop_sets_the_status() -> None:
    lt = LoopThread()
    lt.start()
    seen: list[str] = []
    threading.Thread(target=lambda: lt.loop.call_soon_threadsafe(lambda: seen.append("x"))).start()
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["x"]
    assert lt.stop(7) == 7
    lt.loop.close()


def test_control_answers_pipelined_and_split_requests_in_order(
    loop: LoopThread, tmp_path: Path
) -> None:
    quits: list[bool] = []
    path = tmp_path / "ctl.sock"
    server = ControlServer(str(path), None, lambda: quits.append(True))  # type: ignore[arg-type]
    loop.call(lambda: server.start(loop.loop))
    c = connect(path)
    c.sendall(b'{"cmd": "nope", "id": 1}\nnot json\n\n{"cmd": "qu')
    first = read_lines(c, 2)
    assert first[0]["id"] == 1 and first[0]["error"]["code"] == "unknown-command"  # type: ignore[index]
    assert first[1]["error"]["code"] == "bad-request"  # type: ignore[index]
    assert not quits
    c.sendall(b'it", "id": "q"}\n')
    assert read_lines(c, 1) == [{"ok": True, "id": "q"}]
    deadline = time.monotonic() + 5
    while not quits and time.monotonic() < deadline:
        time.sleep(0.01)
    assert quits == [True]  # after the reply was sent
    c.close()
    loop.call(server.close)
    assert not path.exists()


def test_control_drops_a_client_whose_line_never_ends(loop: LoopThread, tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    server = ControlServer(str(path), None, lambda: None)  # type: ignore[arg-type]
    loop.call(lambda: server.start(loop.loop))
    c = connect(path)
    c.sendall(b"x" * (MAX_LINE + 10))
    reply = read_lines(c, 1)
    assert reply[0]["error"] == {"code": "bad-request", "message": "request line too long"}
    assert c.recv(100) == b""  # closed
    other = connect(path)  # the server itself keeps serving
    other.sendall(b'{"cmd": "quit"}\n')
    assert read_lines(other, 1) == [{"ok": True}]
    loop.call(server.close)


def test_socket_console_broadcasts_and_takes_input_from_any_client(
    loop: LoopThread, tmp_path: Path
) -> None:
    path = tmp_path / "con.sock"
    console = SocketConsole(str(path))
    typed: list[bytes] = []
    console.on_input = typed.append
    loop.call(lambda: console.start(loop.loop))
    a, b = connect(path), connect(path)
    deadline = time.monotonic() + 5
    while len(console._clients) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    console.write(b"hello from the guest\n")  # as a vCPU thread would
    assert a.recv(100) == b"hello from the guest\n"
    assert b.recv(100) == b"hello from the guest\n"
    b.sendall(b"ls\n")
    while not typed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert typed == [b"ls\n"]
    a.close()
    b.close()
    loop.call(console.close)
    assert not path.exists()


def test_socket_console_drops_a_client_that_stops_reading(loop: LoopThread, tmp_path: Path) -> None:
    path = tmp_path / "con.sock"
    console = SocketConsole(str(path))
    loop.call(lambda: console.start(loop.loop))
    stuck, live = connect(path), connect(path)
    deadline = time.monotonic() + 5
    while len(console._clients) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    received = bytearray()
    chunk = b"y" * 65536
    for _ in range(40):  # 2.5 MiB: more than the socket buffers plus the 1 MiB backlog
        console.write(chunk)
        loop.call(lambda: None)  # let the loop send it
        live.settimeout(0.01)
        try:
            while True:
                received += live.recv(1 << 20)
        except TimeoutError:
            pass
    assert len(console._clients) == 1  # the one that never read is gone
    live.settimeout(5)
    while len(received) < 40 * len(chunk):
        received += live.recv(1 << 20)
    assert len(received) == 40 * len(chunk)
    stuck.close()
    live.close()
    loop.call(console.close)


def test_control_and_console_on_sockets_inherited_as_fds(loop: LoopThread, tmp_path: Path) -> None:
    """As qumrand starts the VMM: sockets it bound, passed as fd=N. The VMM listens on them
    again, so clients see the VMM itself as their peer, and it never unlinks their paths."""
    sockets = {}
    for name in ("ctl", "con"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(tmp_path / f"{name}.sock"))
        s.listen()
        sockets[name] = s
    server = ControlServer(f"fd={sockets['ctl'].detach()}", None, lambda: None)  # type: ignore[arg-type]
    console = SocketConsole(f"fd={sockets['con'].detach()}")
    console.on_input = lambda data: None
    loop.call(lambda: server.start(loop.loop))
    loop.call(lambda: console.start(loop.loop))
    c = connect(tmp_path / "ctl.sock")
    c.sendall(b'{"cmd": "quit", "id": 7}\n')
    assert read_lines(c, 1) == [{"ok": True, "id": 7}]
    v = connect(tmp_path / "con.sock")
    deadline = time.monotonic() + 5
    while not console._clients and time.monotonic() < deadline:  # accepted on the loop thread
        loop.call(lambda: None)
    console.write(b"hello")
    assert v.recv(5) == b"hello"
    c.close()
    v.close()
    loop.call(server.close)
    loop.call(console.close)
    assert (tmp_path / "ctl.sock").exists() and (tmp_path / "con.sock").exists()


def test_an_inherited_fd_that_is_not_a_listening_socket_is_refused(tmp_path: Path) -> None:
    from qumran.vmm.errors import VmmError
    from qumran.vmm.sockets import adopt_socket

    with open(tmp_path / "f", "w") as f, pytest.raises(VmmError, match=r"fd=.*socket"):
        adopt_socket(str(f.fileno()))
    with pytest.raises(VmmError, match="not a file descriptor number"):
        adopt_socket("x")


def test_call_later_runs_timers_in_deadline_order_from_any_thread(loop: LoopThread) -> None:
    seen: list[str] = []
    done = threading.Event()
    started = time.monotonic()

    def late() -> None:
        seen.append("late")
        done.set()

    threading.Thread(target=lambda: loop.loop.call_later(0.2, late)).start()
    loop.loop.call_later(0.05, lambda: seen.append("early"))
    assert done.wait(5)
    assert seen == ["early", "late"]
    assert time.monotonic() - started >= 0.2


def test_console_output_reaches_each_sink_in_batches_and_in_order(loop: LoopThread) -> None:
    from qumran.vmm.console import OUTPUT_DELAY, ConsoleOutput

    batches: list[bytes] = []
    logged = bytearray()
    output = ConsoleOutput(loop.loop, [logged.extend, batches.append])
    vcpu = threading.Thread(target=lambda: [output.write(bytes([b])) for b in b"hello, world\n"])
    vcpu.start()
    vcpu.join(5)
    deadline = time.monotonic() + 5
    while sum(map(len, batches)) < 13 and time.monotonic() < deadline:
        time.sleep(OUTPUT_DELAY)
    assert b"".join(batches) == bytes(logged) == b"hello, world\n"
    assert len(batches) < 13  # a burst goes on in a few writes, not one per byte
    output.write(b"tail")
    output.flush()  # what the VMM does last: nothing stays behind
    assert bytes(logged).endswith(b"tail")
