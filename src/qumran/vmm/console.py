"""The guest's serial console on the host side: stdio or a UNIX listening socket.

Output comes from vCPU threads (the UART's transmit callback); input goes to the machine
from the main loop (:mod:`qumran.vmm.mainloop`). On a terminal, stdio is put in raw mode
and ``Ctrl-A x`` quits (as with QEMU's ``-nographic``); ``Ctrl-A Ctrl-A`` sends a literal Ctrl-A.
With ``socket:PATH`` any number of clients may attach: output goes to all of them,
input is taken from any.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
import threading
import tty
from collections.abc import Callable

from qumran.vmm.mainloop import READ, Listener, MainLoop, Peer
from qumran.vmm.sockets import listen_unix_socket, remove_socket_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from _socket import socket
    from typing import Any

ESCAPE = 0x01  # Ctrl-A
QUIT_KEY = ord("x")
MAX_CLIENT_BACKLOG = 1 << 20  # drop a client that stops reading


class Console:
    """Base: where guest output goes and where input comes from."""

    def __init__(self) -> None:
        self.on_input: Callable[[bytes], None] = lambda _data: None
        self.on_quit: Callable[[], None] = lambda: None

    def write(self, data: bytes) -> None:
        """Called on a vCPU thread with bytes the guest sent."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Set up what must be in place before the guest runs (e.g. the terminal mode)."""

    def start(self, loop: MainLoop) -> None:
        """Start taking input on ``loop``."""

    def close(self) -> None:
        """Stop, restore the terminal, remove sockets."""


class StdioConsole(Console):
    def __init__(self, fd_in: int = 0, fd_out: int = 1) -> None:
        super().__init__()
        self._in = fd_in
        self._out = fd_out
        self._saved: list[Any] | None = None
        self._escaped = False
        self._loop: MainLoop | None = None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._out, view) :]
        except OSError:  # a closed stdout must not kill the vCPU
            pass

    def prepare(self) -> None:
        if os.isatty(self._in):
            self._saved = termios.tcgetattr(self._in)
            tty.setraw(self._in)

    def start(self, loop: MainLoop) -> None:
        try:
            loop.watch(self._in, READ, self._readable)
        except (OSError, ValueError):  # e.g. a regular file (epoll refuses it): no input
            return
        self._loop = loop

    def _readable(self, _mask: int) -> None:
        try:
            data = os.read(self._in, 4096)
        except OSError:
            data = b""
        if not data:  # EOF: keep running without input, like a closed terminal
            self._stop_reading()
            return
        self.on_input(self._filter(data) if self._saved is not None else data)

    def _filter(self, data: bytes) -> bytes:
        """Handle the Ctrl-A escape on a terminal."""
        out = bytearray()
        for byte in data:
            if self._escaped:
                self._escaped = False
                if byte == QUIT_KEY:
                    self.on_quit()
                    break
                if byte == ESCAPE:
                    out.append(ESCAPE)
            elif byte == ESCAPE:
                self._escaped = True
            else:
                out.append(byte)
        return bytes(out)

    def _stop_reading(self) -> None:
        if self._loop is not None:
            self._loop.unwatch(self._in)
            self._loop = None

    def close(self) -> None:
        self._stop_reading()
        if self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._in, termios.TCSADRAIN, self._saved)
            self._saved = None
            with contextlib.suppress(OSError):
                sys.stdout.flush()


class SocketConsole(Console):
    """A listening UNIX socket; every client sees the output, any may type."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._sock = listen_unix_socket(path)
        self._listener: Listener | None = None
        self._clients: set[Peer] = set()
        self._loop: MainLoop | None = None

    def write(self, data: bytes) -> None:
        loop = self._loop
        if loop is not None and self._clients:
            loop.call_soon_threadsafe(lambda: self._broadcast(data))

    def _broadcast(self, data: bytes) -> None:
        for peer in list(self._clients):
            peer.send(data)  # a client too far behind is dropped (MAX_CLIENT_BACKLOG)

    def start(self, loop: MainLoop) -> None:
        self._loop = loop
        self._listener = Listener(loop, self._sock, self._client)

    def _client(self, conn: socket) -> None:
        assert self._loop is not None
        peer = Peer(self._loop, conn, lambda _peer, data: self.on_input(data),
                    self._clients.discard, MAX_CLIENT_BACKLOG)  # fmt: skip
        self._clients.add(peer)

    def close(self) -> None:
        for peer in list(self._clients):
            peer.close()
        self._clients.clear()
        if self._listener is not None:
            self._listener.close()
        else:
            self._sock.close()
        remove_socket_file(self.path)


OUTPUT_DELAY = 0.01  # seconds: how long guest output may wait to be sent on in a batch


class ConsoleOutput:
    """Guest output, from the vCPU threads to the console and its log in batches.

    The UART hands over one byte per THR write. Sent on at once, each byte cost a write to
    the log, a wake-up of the main thread, a send and a wake-up of qumrand, which reads
    the console: in a Debian boot 2 ms of a one-CPU host per byte (BENCHMARKS.md). Here a
    vCPU only appends to a buffer; the first byte of a burst asks the main loop to pass the
    whole buffer on :data:`OUTPUT_DELAY` later, once, to each of ``sinks``, in order.
    """

    def __init__(self, loop: MainLoop, sinks: list[Callable[[bytes], None]]) -> None:
        self._loop = loop
        self._sinks = sinks
        self._lock = threading.Lock()
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        """From any thread (the UART's transmit, with its lock held)."""
        with self._lock:
            first = not self._pending
            self._pending += data
        if first:
            self._loop.call_later(OUTPUT_DELAY, self.flush)

    def flush(self) -> None:
        """Pass on what is buffered (the loop's thread, or the last thing at exit)."""
        with self._lock:
            data = bytes(self._pending)
            self._pending.clear()
        if data:
            for sink in self._sinks:
                sink(data)


class ConsoleLog:
    """``--console-log PATH``: every byte of guest output appended to a file, so the
    console's history outlives clients and a restarted qumrand (QEMU's ``logfile=``).
    Written in order, in :class:`ConsoleOutput`'s batches; a full disk loses log lines,
    never guest output."""

    def __init__(self, path: str) -> None:
        """``path`` may be ``fd=N``: a file qumrand opened for appending and passed on."""
        try:
            if path.startswith("fd=") and path[3:].isdigit():
                self.fd = int(path[3:])
                os.set_inheritable(self.fd, False)
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                self.fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise ValueError(f"cannot open the console log {path}: {exc.strerror}") from None

    def write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.fd, data)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def open_console(spec: str) -> Console:
    """``stdio``, ``socket:PATH``, ``socket:fd=N`` (inherited, listening) or ``none``."""
    if spec == "stdio":
        return StdioConsole()
    if spec == "none":
        return NullConsole()
    if spec.startswith("socket:") and len(spec) > len("socket:"):
        return SocketConsole(spec[len("socket:") :])
    raise ValueError(f"console must be stdio, socket:PATH or none, not {spec!r}")


class NullConsole(Console):
    def write(self, data: bytes) -> None:
        return None
