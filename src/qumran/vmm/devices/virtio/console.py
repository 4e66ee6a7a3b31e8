"""virtio-console (virtio 1.2, 5.3 "Console Device"): one port, the guest's hvc0.

Host side: a :class:`ConsolePort` that outlives guest reboots. Guest output (transmitq) goes
to its ``out`` callback; host input is buffered in the port and copied into the guest's
receive buffers from the device I/O loop.
"""

from __future__ import annotations

import functools
import struct
import threading
from collections.abc import Callable

from qumran.vmm.devices.virtio.device import DeviceContext, DeviceId, VirtioDevice

QUEUE_SIZE = 64
RX, TX = 0, 1
MAX_BUFFERED = 1 << 16  # host input kept while the guest reads nothing


class ConsolePort:
    """The host end of hvc0; thread-safe."""

    def __init__(self, out: Callable[[bytes], None]) -> None:
        self.out = out
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._listener: Callable[[], None] | None = None

    def feed(self, data: bytes) -> None:
        """Host input for the guest (e.g. from the console socket)."""
        with self._lock:
            self._pending += data[: MAX_BUFFERED - len(self._pending)]
            listener = self._listener
        if listener is not None:
            listener()

    def take(self, limit: int) -> bytes:
        with self._lock:
            data = bytes(self._pending[:limit])
            del self._pending[:limit]
            return data

    def unread(self, data: bytes) -> None:
        with self._lock:
            self._pending[:0] = data

    def listen(self, listener: Callable[[], None] | None) -> None:
        with self._lock:
            self._listener = listener


class VirtioConsole(VirtioDevice):
    device_id = DeviceId.CONSOLE
    name = "virtio-console"

    def __init__(self, port: ConsolePort) -> None:
        # 5.3.4: cols, rows, max_nr_ports, emerg_wr (only read with features we do not offer).
        super().__init__((QUEUE_SIZE, QUEUE_SIZE), 0, struct.pack("<HHII", 80, 25, 1, 0))
        self.port = port

    def activated(self, ctx: DeviceContext) -> None:
        self.port.listen(lambda: ctx.loop.call_soon(functools.partial(self.serve, ctx, RX)))

    def reset(self) -> None:
        self.port.listen(None)
        super().reset()

    def process(self, ctx: DeviceContext, index: int) -> None:
        if index == TX:
            self._transmit(ctx)
        else:
            self._receive(ctx)

    def _receive(self, ctx: DeviceContext) -> None:
        queue = ctx.queues[RX]
        done = 0
        while True:
            data = self.port.take(4096)
            if not data:
                break
            chain = queue.pop(ctx.ram)
            if chain is None:
                self.port.unread(data)  # no buffers yet: the guest's next kick brings some
                break
            written = 0
            for view in chain.writable:
                take = min(len(view), len(data) - written)
                view[:take] = data[written : written + take]
                written += take
            if written < len(data):
                self.port.unread(data[written:])
            queue.push(chain.head, written)
            done += 1
        if done:
            ctx.used(RX)

    def _transmit(self, ctx: DeviceContext) -> None:
        queue = ctx.queues[TX]
        done = 0
        while (chain := queue.pop(ctx.ram)) is not None:
            data = chain.read_all()
            if data:
                self.port.out(data)
            queue.push(chain.head, 0)
            done += 1
        if done:
            ctx.used(TX)

    def status(self) -> dict[str, object]:
        return {"type": "console"}
