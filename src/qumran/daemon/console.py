"""The serial console, fanned out: one connection to the hypervisor, many viewers.

The hypervisor serves the console on a UNIX socket that accepts one client: the daemon.
The broker reads it, keeps the recent output (so a late viewer sees what was printed),
and copies every byte to each subscriber. Input from any subscriber goes to the guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

HISTORY_BYTES = 64 * 1024
_QUEUE_CHUNKS = 4096


class ConsoleBroker:
    def __init__(self, path: Path, seed: bytes = b"") -> None:
        self.path = path
        self._history = bytearray(seed[-HISTORY_BYTES:])
        self._subscribers: set[asyncio.Queue[bytes | None]] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def open(self, timeout: float = 10.0) -> None:
        """Connect to the hypervisor's console socket (retrying while it appears)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                reader, self._writer = await asyncio.open_unix_connection(str(self.path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        self._reader_task = asyncio.create_task(self._pump(reader), name=f"console {self.path}")

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
            log.debug("console %s: %s", self.path, exc)
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


def read_log_tail(path: Path, size: int = HISTORY_BYTES) -> bytes:
    """The end of a console log, to seed the history of a re-attached console."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read()
    except OSError:
        return b""
