"""The guest's serial console on the host side: stdio or a UNIX listening socket.

Output comes from vCPU threads (the UART's transmit callback); input goes to the machine
from the event loop. On a terminal, stdio is put in raw mode and ``Ctrl-A x`` quits (as
with QEMU's ``-nographic``); ``Ctrl-A Ctrl-A`` sends a literal Ctrl-A.
With ``socket:PATH`` any number of clients may attach: output goes to all of them,
input is taken from any.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
import tty
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qumran.vmm.sockets import bind_unix_socket

if TYPE_CHECKING:  # asyncio is imported once the guest runs (start-up time)
    import asyncio

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

    async def start(self) -> None:
        """Start taking input (event loop running)."""

    def close(self) -> None:
        """Stop, restore the terminal, remove sockets."""


class StdioConsole(Console):
    def __init__(self, fd_in: int = 0, fd_out: int = 1) -> None:
        super().__init__()
        self._in = fd_in
        self._out = fd_out
        self._saved: list[Any] | None = None
        self._escaped = False
        self._reading = False

    def write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # a closed stdout must not kill the vCPU
            view = memoryview(data)
            while view:
                view = view[os.write(self._out, view) :]

    def prepare(self) -> None:
        if os.isatty(self._in):
            self._saved = termios.tcgetattr(self._in)
            tty.setraw(self._in)

    async def start(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, ValueError, PermissionError):
            loop.add_reader(self._in, self._readable)
            self._reading = True

    def _readable(self) -> None:
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
        if self._reading:
            import asyncio

            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._in)
            self._reading = False

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
        self._sock = bind_unix_socket(path)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def write(self, data: bytes) -> None:
        loop = self._loop
        if loop is not None and self._clients:
            with contextlib.suppress(RuntimeError):  # loop already closed at exit
                loop.call_soon_threadsafe(self._broadcast, data)

    def _broadcast(self, data: bytes) -> None:
        for writer in list(self._clients):
            transport = writer.transport
            if transport.get_write_buffer_size() > MAX_CLIENT_BACKLOG:
                self._clients.discard(writer)
                transport.abort()
                continue
            writer.write(data)

    async def start(self) -> None:
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_unix_server(self._client, sock=self._sock)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while data := await reader.read(4096):
                self.on_input(data)
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    def close(self) -> None:
        for writer in list(self._clients):
            writer.transport.abort()
        self._clients.clear()
        if self._server is not None:
            self._server.close()
        else:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def open_console(spec: str) -> Console:
    """``stdio``, ``socket:PATH`` or ``none``."""
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
