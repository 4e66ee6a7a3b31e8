"""DOMAIN_OPEN_CONSOLE's stream: a VM's serial console over a libvirt connection.

The guest's output goes to the client as STREAM packets with the call's serial (status
CONTINUE), keystrokes come back the same way; when the VM stops, an OK packet is the end
of the stream.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from qumran.libvirt import packet
from qumran.libvirt.packet import Header

if TYPE_CHECKING:
    from qumran.daemon.console import ConsoleBroker
    from qumran.libvirt.server import Connection


class ConsoleStream:
    """DOMAIN_OPEN_CONSOLE's stream: guest output down, keystrokes up, same serial."""

    def __init__(self, conn: Connection, header: Header, console: ConsoleBroker) -> None:
        self.conn = conn
        self.header = header._replace(type=packet.STREAM)
        self.console = console
        _, self.queue = console.subscribe()

    async def pump(self) -> None:
        try:
            while (chunk := await self.queue.get()) is not None:
                for start in range(0, len(chunk), 65536):
                    data = chunk[start : start + 65536]
                    self.conn.send(self.header._replace(status=packet.CONTINUE), data)
                with contextlib.suppress(ConnectionError):
                    await self.conn.writer.drain()
            self.conn.send(self.header._replace(status=packet.OK))  # end of file: it stopped
        finally:
            self.close()

    async def received(self, header: Header, payload: memoryview) -> None:
        if header.status == packet.CONTINUE:
            await self.console.write(bytes(payload))
        else:  # the client finished (OK, answered in kind) or aborted (ERROR)
            if header.status == packet.OK:
                self.conn.send(self.header._replace(status=packet.OK))
            self.close()

    def close(self) -> None:
        self.console.unsubscribe(self.queue)
        self.conn.streams.pop(self.header.serial, None)
