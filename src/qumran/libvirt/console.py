"""DOMAIN_OPEN_CONSOLE's stream: a VM's serial console over a libvirt connection.

libvirt's stream protocol (docs/kbase/internals/rpc.rst, "Stream data"; the daemon side
is remote_daemon_stream.c), on the call's serial:

- data either way is a STREAM packet with status CONTINUE;
- the end of the guest's output (the VM stopped) is an *empty* CONTINUE packet: the
  client reads end-of-file, and the stream stays registered;
- the client then finishes (a STREAM packet with status OK) or aborts (status ERROR),
  and waits for the answer: an empty STREAM packet with status OK confirms either. Only
  then is the stream gone.

An OK packet sent before the client asks is taken by libvirt's client as an unexpected
finish confirmation, and it drops the whole connection ("Disconnected ... due to I/O
error"); a finish or abort left unanswered leaves ``virsh console`` waiting for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from typing import TYPE_CHECKING

from qumran.libvirt import packet
from qumran.libvirt.packet import Header

if TYPE_CHECKING:
    from qumran.daemon.console import ConsoleBroker
    from qumran.libvirt.server import Connection

CHUNK = 65536  # bytes of console output per packet (well under libvirt's payload limit)


class StreamState(enum.Enum):
    OPEN = "open"  # output flows down, keystrokes up
    ENDED = "ended"  # the guest's output ended (EOF sent); waiting for finish or abort
    CLOSED = "closed"  # finished, aborted, or the connection went: unregistered


class ConsoleStream:
    """DOMAIN_OPEN_CONSOLE's stream: guest output down, keystrokes up, same serial."""

    def __init__(self, conn: Connection, header: Header, console: ConsoleBroker) -> None:
        self.conn = conn
        self.header = header._replace(type=packet.STREAM, status=packet.CONTINUE)
        self.console = console
        self.state = StreamState.OPEN
        _, self.queue = console.subscribe()  # what follows, not the past (as a pty's)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Register the stream and start sending output (after the call's reply)."""
        self.conn.streams[self.header.serial] = self
        self._task = self.conn.spawn(self._pump(), f"libvirt console {self.console.name}")

    async def _pump(self) -> None:
        while (chunk := await self.queue.get()) is not None:
            for start in range(0, len(chunk), CHUNK):
                self.conn.send(self.header, chunk[start : start + CHUNK])
            with contextlib.suppress(ConnectionError):
                await self.conn.writer.drain()
        if self.state is StreamState.OPEN:
            self.state = StreamState.ENDED
            self.console.unsubscribe(self.queue)
            self.conn.send(self.header)  # empty CONTINUE: end of file

    async def received(self, header: Header, payload: memoryview) -> None:
        match header.status:
            case packet.CONTINUE:
                if self.state is StreamState.OPEN:
                    await self.console.write(bytes(payload))
                # After the end, keystrokes have nowhere to go: dropped, as libvirtd does.
            case _:  # OK: the client finishes; ERROR: it aborts. Both are confirmed.
                self.close()
                self.conn.send(self.header._replace(status=packet.OK))

    def close(self) -> None:
        if self.state is StreamState.CLOSED:
            return
        self.state = StreamState.CLOSED
        self.console.unsubscribe(self.queue)
        self.conn.streams.pop(self.header.serial, None)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
