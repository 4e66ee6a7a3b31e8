"""virtio-rng (virtio 1.2, 5.4 "Entropy Device"): the host's /dev/urandom, read straight
into the guest's buffers with ``readv``."""

from __future__ import annotations

import os

from qumran.vmm.devices.virtio.device import DeviceContext, DeviceId, VirtioDevice

QUEUE_SIZE = 64
MAX_REQUEST = 1 << 16  # per chain: the guest asks for small amounts; cap a hostile one


class VirtioRng(VirtioDevice):
    device_id = DeviceId.ENTROPY
    name = "virtio-rng"
    snapshottable = True

    def __init__(self, source: str = "/dev/urandom") -> None:
        super().__init__((QUEUE_SIZE,), 0, b"")
        self._fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        self.bytes_given = 0

    def process(self, ctx: DeviceContext, index: int) -> None:
        queue = ctx.queues[index]
        done = 0
        while (chain := queue.pop(ctx.ram)) is not None:
            views, room = [], MAX_REQUEST
            for v in chain.writable:
                if room <= 0:
                    break
                views.append(v[:room])
                room -= len(views[-1])
            n = os.readv(self._fd, views) if views else 0
            self.bytes_given += n
            queue.push(chain.head, n)
            done += 1
        if done:
            ctx.used(index)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def status(self) -> dict[str, object]:
        return {"type": "rng", "bytes": self.bytes_given}
