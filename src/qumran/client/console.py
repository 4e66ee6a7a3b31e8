"""Attach a terminal (or a pipe) to a VM's serial console over the API's WebSocket.

Imported only by the commands that need it: it pulls in ``websockets``. Guest output is
pumped to ``stdout_fd`` by a thread; the calling thread forwards ``stdin_fd`` to the
guest. On a tty the terminal is put in raw mode (every key, Ctrl-C included, goes to
the guest) and restored on every way out. Ctrl-] (0x1d, as in telnet and virsh) leaves.
EOF on a piped stdin does not end the session (the guest's answer is usually still on
its way); ``until`` (leave once the guest printed that text) and ``timeout`` do.

The daemon keeps the guest's recent output for late viewers. ``until`` must not be met
by something printed before the session began (after a reboot, the previous boot's
ready line), so what the recent output does is chosen with :class:`Replay`.
"""

from __future__ import annotations

import enum
import os
import re
import select
import sys
import threading
import time
from typing import Any

from qumran.client.client import Client, error_for_status, error_from_response
from qumran.client.errors import DaemonNotRunning
from qumran.client.wire import not_running_message, quote
from qumran.errors import ConnectionFailed, InvalidState, QumranError

ESCAPE = 0x1D  # Ctrl-]


class ConsoleExit(enum.Enum):
    """Why a console session ended."""

    ESCAPE = "escape"  # the user typed the escape character
    UNTIL = "until"  # the guest printed the awaited text
    TIMEOUT = "timeout"
    CLOSED = "closed"  # the daemon closed the stream (the VM stopped, or the daemon went away)


class Replay(enum.Enum):
    """What happens to the output printed before the session began."""

    NONE = "none"  # not shown: the session starts with what the guest prints next
    SHOW = "show"  # shown first; ``until`` looks only at what is printed after it
    MATCH = "match"  # shown and searched like live output: for a VM this command started

    @property
    def query(self) -> str:
        """The console route's ``history`` parameter (docs/api.md) for this replay."""
        # MATCH asks for the undivided stream every daemon sends by default.
        return {"none": "?history=none", "show": "?history=separate", "match": ""}[self.value]


class _Session:
    """State shared by the output thread and the input loop."""

    def __init__(self, until: bytes | None, replay: Replay) -> None:
        self.until = until
        self.replay = replay
        self.tail = b""  # the end of the output so far, to match `until` across frames
        self.exit: ConsoleExit | None = None
        self.error: QumranError | None = None  # a refusal sent as a 4xxx close code
        self.wake_r, self.wake_w = os.pipe()
        # The output thread may outlive the session (an interrupt): never write to a closed
        # (or, worse, reused) fd number.
        self._lock = threading.Lock()

    def finish(self, why: ConsoleExit) -> None:
        with self._lock:
            if self.exit is None:
                self.exit = why
            if self.wake_w >= 0:
                os.write(self.wake_w, b"x")

    def saw(self, data: bytes) -> bool:
        if not self.until:
            return False
        window = self.tail + data
        self.tail = window[-(len(self.until) - 1) :] if len(self.until) > 1 else b""
        return self.until in window

    def close(self) -> None:
        with self._lock:
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.wake_r = self.wake_w = -1


def attach_console(
    socket_path: str,
    name: str,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    *,
    until: bytes | None = None,
    timeout: float | None = None,
    replay: Replay = Replay.NONE,
    banner: bool = True,
) -> ConsoleExit:
    """Run a console session until escape, ``until``, ``timeout`` or the stream's end."""
    session = _Session(until, replay)
    saved = None
    try:
        with _connect(socket_path, name, replay) as ws:  # closed on every way out
            saved = _enter_raw(stdin_fd)
            raw = saved is not None
            if banner:
                _say(f"Connected to {name} (escape character is ^])\n", raw=raw)
            pump = threading.Thread(
                target=_pump_output, args=(ws, stdout_fd, session), name="console-out", daemon=True
            )
            pump.start()
            why = _forward_input(ws, stdin_fd, session, timeout)
            ws.close()
            pump.join(timeout=2)
        if session.error is not None:
            raise session.error
        if why is ConsoleExit.CLOSED and banner:
            _say(f"\nConnection to {name} closed\n", raw=raw)
        return why
    finally:
        _leave_raw(stdin_fd, saved)
        session.close()


def recent_output(socket_path: str, name: str) -> bytes:
    """What the daemon kept of the guest's recent output (up to 64 KiB), nothing live."""
    with _connect(socket_path, name, Replay.SHOW) as ws:
        return _bytes(ws.recv(timeout=30))


def watch_console(
    socket_path: str,
    name: str,
    until: re.Pattern[bytes],
    *,
    timeout: float,
    replay: Replay = Replay.MATCH,
    keep: int = 1 << 20,
) -> tuple[ConsoleExit, bytes]:
    """Read a VM's console, sending nothing, until ``until`` matches the output (read as
    lines, ``\\r`` dropped), the timeout passes, or the stream ends. Returns why, and the
    output read (its last ``keep`` bytes), for callers that look for more in it."""
    from websockets.exceptions import ConnectionClosed

    deadline = time.monotonic() + timeout
    seen = bytearray()
    with _connect(socket_path, name, replay) as ws:
        try:
            if replay is Replay.SHOW:
                ws.recv(timeout=max(0.0, deadline - time.monotonic()))  # before: not searched
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return ConsoleExit.TIMEOUT, bytes(seen)
                try:
                    data = _bytes(ws.recv(timeout=left))
                except TimeoutError:
                    return ConsoleExit.TIMEOUT, bytes(seen)
                start = max(0, seen.rfind(b"\n") + 1)  # match whole lines, however framed
                seen += data.replace(b"\r", b"")
                if until.search(seen, start):
                    return ConsoleExit.UNTIL, bytes(seen)
                if len(seen) > keep:
                    del seen[: len(seen) - keep]
        except ConnectionClosed as exc:
            if exc.rcvd is not None and 4000 <= exc.rcvd.code < 5000:
                raise error_for_status(exc.rcvd.code - 4000, exc.rcvd.reason) from None
            return ConsoleExit.CLOSED, bytes(seen)


def _connect(socket_path: str, name: str, replay: Replay) -> Any:
    from websockets.exceptions import InvalidStatus, WebSocketException
    from websockets.sync.client import unix_connect

    uri = f"ws://localhost/v1/vms/{quote(name)}/console{replay.query}"
    try:
        return unix_connect(socket_path, uri, close_timeout=2, compression=None)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise DaemonNotRunning(not_running_message(socket_path, exc)) from None
    except InvalidStatus as exc:
        resp = exc.response
        body = bytes(resp.body or b"")
        if resp.status_code == 403 and not body:
            # A refusal before the handshake reaches us as a bare 403, whatever the cause:
            # ask the API why.
            _diagnose(socket_path, name)
        raise error_from_response(resp.status_code, resp.reason_phrase, body) from None
    except (OSError, WebSocketException) as exc:
        msg = f"cannot open the console of {name} at {socket_path}: {exc}"
        raise ConnectionFailed(msg) from None


def _diagnose(socket_path: str, name: str) -> None:
    """Raise the reason a console was refused: the VM is unknown, or not running."""
    vm = Client(socket_path).get_vm(name)  # raises NotFound / PermissionDenied
    if vm["state"] not in ("running", "paused", "shutdown"):
        raise InvalidState(f"VM {name!r} is not running (state {vm['state']}); start it first")


def _pump_output(ws: Any, stdout_fd: int, session: _Session) -> None:
    from websockets.exceptions import ConnectionClosed

    why = ConsoleExit.CLOSED
    try:
        if session.replay is Replay.SHOW:  # the recent output comes alone, first
            _write_all(stdout_fd, _bytes(ws.recv()))
        while True:
            data = _bytes(ws.recv())
            _write_all(stdout_fd, data)
            if session.saw(data):
                why = ConsoleExit.UNTIL
                break
    except ConnectionClosed as exc:
        # The API refuses with close code 4000 + HTTP status, the message as the reason.
        if exc.rcvd is not None and 4000 <= exc.rcvd.code < 5000:
            session.error = error_for_status(exc.rcvd.code - 4000, exc.rcvd.reason)
    except OSError:
        pass
    finally:
        session.finish(why)


def _bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _forward_input(ws: Any, stdin_fd: int, session: _Session, timeout: float | None) -> ConsoleExit:
    from websockets.exceptions import ConnectionClosed

    deadline = None if timeout is None else time.monotonic() + timeout
    fds = [stdin_fd, session.wake_r]
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select(fds, [], [], wait)
        if not ready:
            return ConsoleExit.TIMEOUT
        if session.wake_r in ready:
            return session.exit or ConsoleExit.CLOSED
        data = os.read(stdin_fd, 4096)
        if not data:
            fds.remove(stdin_fd)  # EOF: keep showing the guest's output
            continue
        cut = data.find(ESCAPE)
        try:
            if cut >= 0:
                if cut:
                    ws.send(data[:cut])
                return ConsoleExit.ESCAPE
            ws.send(data)
        except ConnectionClosed:
            return ConsoleExit.CLOSED


def _enter_raw(fd: int) -> list[Any] | None:
    """Raw mode on a tty; returns the settings to restore (None when not a tty)."""
    if not os.isatty(fd):
        return None
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    return saved


def _leave_raw(fd: int, saved: list[Any] | None) -> None:
    if saved is not None:
        import termios

        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _say(text: str, *, raw: bool) -> None:
    # In raw mode "\n" no longer returns the carriage.
    sys.stderr.write(text.replace("\n", "\r\n") if raw else text)
    sys.stderr.flush()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
