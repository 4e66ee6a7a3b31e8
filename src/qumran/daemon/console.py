"""The serial console, fanned out: one connection to the hypervisor, many viewers.

The hypervisor serves the console on a UNIX socket that accepts one client: the daemon.
The broker reads it, keeps the recent output (so a late viewer sees what was printed),
and copies every byte to each subscriber. Input from any subscriber goes to the guest.
The driver layer makes the connection (checking who answers); the broker only uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

log = logging.getLogger(__name__)

HISTORY_BYTES = 64 * 1024
_QUEUE_CHUNKS = 4096


class ConsoleBroker:
    def __init__(self, name: str, seed: bytes = b"") -> None:
        self.name = name
        self._history = bytearray(seed[-HISTORY_BYTES:])
        self._subscribers: set[asyncio.Queue[bytes | None]] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def open(self, sock: socket.socket) -> None:
        """Serve the hypervisor's console, connected as ``sock``."""
        reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        self._reader_task = asyncio.create_task(self._pump(reader), name=f"console {self.name}")

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(65536):
                self._history += chunk
                if len(self._history) > HISTORY_BYTES:
                    del self._history[: len(self._history) - HISTORY_BYTES]
                for queue in list(self._subscribers):
                    if queue.qsize() >= _QUEUE_CHUNKS:  # a viewer that stopped reading
                        self._subscribers.discard(queue)
                        queue.put_nowait(None)
                    else:
                        queue.put_nowait(chunk)
        except OSError as exc:
            log.debug("console of %s: %s", self.name, exc)
        finally:
            self._finish()

    def _finish(self) -> None:
        for queue in self._subscribers:
            queue.put_nowait(None)
        self._subscribers.clear()
        self.closed.set()

    def history(self) -> bytes:
        return bytes(self._history)

    def subscribe(self) -> tuple[bytes, asyncio.Queue[bytes | None]]:
        """The recent output and a queue of what follows (None: the console closed)."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        if self.closed.is_set():
            queue.put_nowait(None)
        else:
            self._subscribers.add(queue)
        return bytes(self._history), queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._subscribers.discard(queue)

    async def write(self, data: bytes) -> None:
        if self._writer is None or self.closed.is_set():
            return
        self._writer.write(data)
        with contextlib.suppress(OSError):
            await self._writer.drain()

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._finish()
