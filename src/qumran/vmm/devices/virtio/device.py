"""The interface between a virtio device and its transport (virtio 1.2, 2 "Basic Facilities
of a Virtio Device").

A device knows its id, its feature bits, its configuration space and what to do with the
buffers on its queues. It knows nothing of PCI: the transport (``devices/pci/virtio_pci.py``)
owns status, feature negotiation, queue registers and interrupts, and hands the device a
:class:`DeviceContext` when the driver sets DRIVER_OK.

Threads: ``notify`` runs on the device I/O loop (``ioloop.py``); ``read_config`` and
``write_config`` run on vCPU threads. The transport serialises both with its own lock.
"""

from __future__ import annotations

import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

from qumran.vmm.devices.virtio.ioloop import IoLoop
from qumran.vmm.devices.virtio.queue import GuestRam, QueueError, SplitQueue
from qumran.vmm.log import get_logger

log = get_logger(__name__)

# 6 "Reserved Feature Bits"
VIRTIO_F_INDIRECT_DESC = 1 << 28
VIRTIO_F_RING_EVENT_IDX = 1 << 29  # used_event / avail_event (2.7.7.2, 2.7.10)
VIRTIO_F_VERSION_1 = 1 << 32


class DeviceId:
    """5 "Device Types"."""

    NET = 1
    BLOCK = 2
    CONSOLE = 3
    ENTROPY = 4


class KernelQueues:
    """What a device whose rings the host kernel serves (vhost) gets from the transport.

    Here and in :class:`DeviceContext`, plain slotted classes, not dataclasses: see
    :mod:`qumran.record`."""

    __slots__ = ("file_regions", "interrupt", "irqfd", "kick_fds", "ram_fd", "regions")

    def __init__(
        self,
        kick_fds: list[int],
        regions: tuple[tuple[int, int, int], ...],
        irqfd: Callable[[int], int | None],
        interrupt: Callable[[int], None],
        ram_fd: int = -1,
        file_regions: tuple[tuple[int, int, int, int], ...] = (),
    ) -> None:
        self.kick_fds = kick_fds  # per queue: the eventfd KVM signals on the doorbell write
        self.regions = regions  # guest RAM: (guest address, size, host address)
        self.irqfd = irqfd  # queue -> eventfd raising its MSI-X vector in KVM, if the vector
        # is enabled and unmasked now; None: go through ``interrupt``
        self.interrupt = interrupt  # raise queue i's interrupt (already found to be needed)
        # Guest RAM as a file another process can map (vhost-user): the memfd, and per
        # region (guest address, size, host address, offset in the file). -1 and () without.
        self.ram_fd = ram_fd
        self.file_regions = file_regions


class DeviceContext:
    """What an active device works with, valid until the next reset."""

    __slots__ = ("broken", "features", "kernel", "lock", "loop", "queues", "ram", "used")

    def __init__(
        self,
        ram: GuestRam,
        queues: list[SplitQueue],
        features: int,
        loop: IoLoop,
        used: Callable[[int], None],
        broken: Callable[[str], None],
        lock: threading.RLock,
        kernel: KernelQueues | None = None,
    ) -> None:
        self.ram = ram
        self.queues = queues
        self.features = features  # the negotiated set
        self.loop = loop
        self.used = used  # "used buffer notification" for a queue (2.3)
        self.broken = broken  # set DEVICE_NEEDS_RESET and tell the driver
        self.lock = lock  # the transport's: hold it in callbacks of your own
        self.kernel = kernel  # set for a device with ``rings_in_kernel``


class VirtioDevice(ABC):
    """Base class of every virtio device."""

    device_id: int
    name: str = "virtio"
    # True: the host kernel serves the rings once active (vhost); the transport then leaves
    # the kick eventfds alone and hands the device a :class:`KernelQueues`.
    rings_in_kernel: bool = False
    # True: the transport's state (features, queues, MSI-X) is all there is to save for a
    # snapshot; devices with state elsewhere (a back end's rings, a TAP) say False.
    snapshottable: bool = False

    def __init__(self, queue_sizes: tuple[int, ...], features: int, config: bytes) -> None:
        self.queue_sizes = queue_sizes
        # Every device takes the ring features: they live in the queue code, not here.
        ring_features = VIRTIO_F_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX
        self.device_features = features | VIRTIO_F_VERSION_1 | ring_features
        self.config = bytearray(config)
        self.ctx: DeviceContext | None = None

    # --- configuration space (vCPU threads, under the transport lock) --------------------

    def read_config(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > len(self.config):
            return 0
        return int.from_bytes(self.config[offset : offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:  # noqa: B027
        """Most configuration fields are read-only for the driver; devices override."""

    # --- life cycle (transport) -----------------------------------------------------------

    def activate(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        self.activated(ctx)

    def activated(self, ctx: DeviceContext) -> None:  # noqa: B027
        """Hook: the driver set DRIVER_OK (e.g. start reading a TAP device)."""

    def vectors_changed(self) -> None:  # noqa: B027
        """Hook: the driver wrote the MSI-X table or control while the device is active."""

    def reset(self) -> None:
        """The driver reset the device (or the VM stops): forget the queues."""
        self.ctx = None

    def kick(self, index: int) -> None:
        """The driver notified queue ``index`` (I/O loop thread)."""
        ctx = self.ctx
        if ctx is None or index >= len(ctx.queues) or not ctx.queues[index].ready:
            return
        try:
            self.process(ctx, index)
        except QueueError as exc:
            self.fail(str(exc))

    def serve(self, ctx: DeviceContext, index: int) -> None:
        """Process queue ``index`` on the backend's own wake-up (input is waiting), under
        the transport's lock, unless the device was reset since that wake-up was armed."""
        with ctx.lock:
            if self.ctx is not ctx:
                return
            try:
                self.process(ctx, index)
            except QueueError as exc:
                self.fail(str(exc))

    def fail(self, why: str) -> None:
        """The guest broke the device: stop touching its queues and ask for a reset."""
        ctx, self.ctx = self.ctx, None
        log.warning("%s: %s; device needs reset", self.name, why)
        if ctx is not None:
            ctx.broken(why)

    @abstractmethod
    def process(self, ctx: DeviceContext, index: int) -> None:
        """Handle every chain available on queue ``index``; QueueError for a broken ring."""

    def close(self) -> None:  # noqa: B027
        """Release what the device itself opened (not the backend it was given)."""

    def status(self) -> dict[str, object]:
        """What the control socket's status shows for this device."""
        return {"type": self.name}


def pack_config(fmt: str, *values: int) -> bytes:
    return struct.pack("<" + fmt, *values)
