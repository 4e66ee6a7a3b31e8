"""The virtio-pci modern transport (virtio 1.2, 4.1 "Virtio Over PCI Bus").

One 32-bit memory BAR holds every structure the capabilities point at (4.1.4):

  BAR0 offset  structure                           capability
  0x0000       common configuration (4.1.4.3)      VIRTIO_PCI_CAP_COMMON_CFG
  0x1000       ISR status (4.1.4.5)                VIRTIO_PCI_CAP_ISR_CFG
  0x2000       device-specific configuration       VIRTIO_PCI_CAP_DEVICE_CFG
  0x3000       queue notify, 4 bytes per queue     VIRTIO_PCI_CAP_NOTIFY_CFG (multiplier 4)
  0x4000       MSI-X table                         MSI-X capability (PCI 3.0, 6.8.2)
  0x5000       MSI-X pending-bit array

Queue notifications: each queue has an eventfd the device I/O loop waits on. Once the
queue is enabled its notify address is bound to that eventfd with KVM_IOEVENTFD, so a kick
is handled by KVM and never stops the vCPU in Python; a write that still arrives as an
MMIO exit (before binding) signals the same eventfd.

Interrupts: MSI-X when the driver enabled it, else INTx (pin A) with the ISR byte.

A device whose rings the host kernel serves (``rings_in_kernel``, vhost) gets the kick
eventfds, the RAM regions and two interrupt paths in a :class:`KernelQueues` at DRIVER_OK;
until the next reset the I/O loop stops reading those eventfds, and the device hears of
every MSI-X table or control write (``vectors_changed``) to re-pick its interrupt path.
"""

from __future__ import annotations

import functools
import os
import struct
import threading
from collections.abc import Sequence

from qumran.vmm.devices.irq import IrqLine, IrqOutput
from qumran.vmm.devices.pci.config import CMD_MEMORY, ConfigSpace
from qumran.vmm.devices.pci.msix import CAP_ID_MSIX, MsiSink, MsixTable
from qumran.vmm.devices.virtio.device import (
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_EVENT_IDX,
    DeviceContext,
    KernelQueues,
    VirtioDevice,
)
from qumran.vmm.devices.virtio.ioloop import IoLoop
from qumran.vmm.devices.virtio.queue import GuestRam, QueueError, SplitQueue
from qumran.vmm.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol
else:  # typing costs every VMM process resident memory; a Protocol matters to checkers only
    Protocol = object

log = get_logger(__name__)

VIRTIO_VENDOR = 0x1AF4
VIRTIO_MODERN_DEVICE_BASE = 0x1040  # 4.1.2.1: 0x1040 + device id
VIRTIO_PCI_REVISION = 1
BAR_SIZE = 0x8000
COMMON, ISR, DEVICE_CFG, NOTIFY, MSIX_TABLE, MSIX_PBA = (
    0x0000, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000
)  # fmt: skip
COMMON_LEN, ISR_LEN, DEVICE_CFG_LEN = 0x38, 4, 0x1000
NOTIFY_MULTIPLIER = 4
CAP_ID_VENDOR = 0x09
CFG_COMMON, CFG_NOTIFY, CFG_ISR, CFG_DEVICE = 1, 2, 3, 4  # 4.1.4 cfg_type
NO_VECTOR = 0xFFFF  # VIRTIO_MSI_NO_VECTOR
# 2.1 Device Status Field
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET, FAILED = 1, 2, 4, 8, 64, 128
ISR_QUEUE, ISR_CONFIG = 1, 2

# 4.1.4.3 struct virtio_pci_common_cfg, field offsets.
(DFSELECT, DF, GFSELECT, GF, MSIX_CONFIG, NUM_QUEUES, STATUS, CFG_GENERATION,
 Q_SELECT, Q_SIZE, Q_MSIX_VECTOR, Q_ENABLE, Q_NOTIFY_OFF, Q_DESC, Q_DRIVER, Q_DEVICE) = (
    0x00, 0x04, 0x08, 0x0C, 0x10, 0x12, 0x14, 0x15,
    0x16, 0x18, 0x1A, 0x1C, 0x1E, 0x20, 0x28, 0x30)  # fmt: skip
_COMMON = struct.Struct("<IIIIHHBBHHHHHQQQ")


class Doorbells(Protocol):
    """Binds a guest-physical notify address to an eventfd (KVM_IOEVENTFD)."""

    def bind(self, addr: int, length: int, fd: int) -> None: ...

    def unbind(self, addr: int, length: int, fd: int) -> None: ...


class VirtioPciDevice:
    """One virtio device behind PCI: configuration space, BAR0 and interrupts."""

    def __init__(
        self, device: VirtioDevice, bar_address: int, ram: GuestRam, loop: IoLoop,
        msi: MsiSink, intx: IrqLine, doorbells: Doorbells,
        regions: Sequence[tuple[int, int, int]] = (),
        shared: tuple[int, tuple[tuple[int, int, int, int], ...]] = (-1, ()),
    ) -> None:  # fmt: skip
        self.device = device
        self._regions = tuple(regions)  # (guest address, size, host address), for vhost
        self._shared = shared  # guest RAM's memfd and its regions in it, for vhost-user
        self._ram, self._loop, self._doorbells = ram, loop, doorbells
        self._lock = threading.RLock()
        nq = len(device.queue_sizes)
        self.queues = [SplitQueue(size) for size in device.queue_sizes]
        self.msix = MsixTable(nq + 1, msi)
        self._intx = IrqOutput(intx)
        self.config = self._config_space(bar_address)
        self.bar = self.config.bars[0]
        self._kick_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(nq)]
        self._bound: list[tuple[int, int]] = []
        # Guest kicks (eventfd counts), loop wake-ups they caused, used-buffer interrupts.
        self.counters = {"kicks": 0, "wakeups": 0, "interrupts": 0}
        self._watch_kicks()
        self._reset_state()

    def _watch_kicks(self) -> None:
        for index, fd in enumerate(self._kick_fds):
            self._loop.add_reader(fd, functools.partial(self._on_kick, index, fd))

    def _config_space(self, bar_address: int) -> ConfigSpace:
        dev_id = self.device.device_id
        cfg = ConfigSpace(
            VIRTIO_VENDOR, VIRTIO_MODERN_DEVICE_BASE + dev_id, self.device_class(),
            VIRTIO_PCI_REVISION, VIRTIO_VENDOR, 0x40, interrupt_pin=1,
        )  # fmt: skip
        cfg.add_memory_bar(0, BAR_SIZE, bar_address)
        body, wmask = self.msix.capability(0, MSIX_TABLE, MSIX_PBA)
        self._msix_cap = cfg.add_capability(CAP_ID_MSIX, body, wmask)
        for cfg_type, offset, length in (
            (CFG_COMMON, COMMON, COMMON_LEN), (CFG_ISR, ISR, ISR_LEN),
            (CFG_DEVICE, DEVICE_CFG, DEVICE_CFG_LEN),
        ):  # fmt: skip
            cfg.add_capability(CAP_ID_VENDOR, _vendor_cap(cfg_type, offset, length))
        notify_len = NOTIFY_MULTIPLIER * len(self.device.queue_sizes)
        notify = _vendor_cap(CFG_NOTIFY, NOTIFY, notify_len) + struct.pack("<I", NOTIFY_MULTIPLIER)
        cfg.add_capability(CAP_ID_VENDOR, notify)
        return cfg

    def device_class(self) -> int:
        return {1: 0x020000, 2: 0x018000, 3: 0x078000}.get(self.device.device_id, 0xFF0000)

    def _reset_state(self) -> None:
        self.status = 0
        self.dfselect = self.gfselect = 0
        self.driver_features = 0
        self.config_vector = NO_VECTOR
        self.queue_select = 0
        self.queue_vectors = [NO_VECTOR] * len(self.queues)
        self.isr = 0
        for q in self.queues:
            q.release()
            q.reset()
        self._intx.drive(False)

    # --- PCI configuration space (vCPU threads) -----------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        with self._lock:
            return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            before = self.bar_window()
            self.config.write(offset, size, value)
            cap = self._msix_cap
            if offset < cap + 4 and offset + size > cap + 2:
                self.msix.set_control(self.config.read(cap + 2, 2))
                self._vectors_changed()
            if self.bar_window() != before:
                self._rebind()

    def bar_window(self) -> tuple[int, int] | None:
        """(address, size) of BAR0 while memory decoding is on."""
        if not self.config.command & CMD_MEMORY:
            return None
        return self.config.bar_address(self.bar), BAR_SIZE

    # --- BAR0 (vCPU threads) -----------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        with self._lock:
            if COMMON <= offset < COMMON + COMMON_LEN:
                return self._common_read(offset - COMMON, size)
            if ISR <= offset < ISR + ISR_LEN:
                isr, self.isr = self.isr, 0  # 4.1.4.5.1: reading clears it
                self._intx.drive(False)
                return isr if offset == ISR else 0
            if DEVICE_CFG <= offset < DEVICE_CFG + DEVICE_CFG_LEN:
                return self.device.read_config(offset - DEVICE_CFG, size)
            if MSIX_TABLE <= offset < MSIX_TABLE + self.msix.table_size:
                return self.msix.read_table(offset - MSIX_TABLE, size)
            if MSIX_PBA <= offset < MSIX_PBA + self.msix.pba_size:
                return self.msix.read_pba(offset - MSIX_PBA, size)
            return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if NOTIFY <= offset < NOTIFY + NOTIFY_MULTIPLIER * len(self.queues):
            os.eventfd_write(self._kick_fds[(offset - NOTIFY) // NOTIFY_MULTIPLIER], 1)
            return
        with self._lock:
            if COMMON <= offset < COMMON + COMMON_LEN:
                if size == 8:
                    self._common_write(offset - COMMON, 4, value & 0xFFFF_FFFF)
                    self._common_write(offset - COMMON + 4, 4, value >> 32)
                else:
                    self._common_write(offset - COMMON, size, value)
            elif DEVICE_CFG <= offset < DEVICE_CFG + DEVICE_CFG_LEN:
                self.device.write_config(offset - DEVICE_CFG, size, value)
            elif MSIX_TABLE <= offset < MSIX_TABLE + self.msix.table_size:
                self.msix.write_table(offset - MSIX_TABLE, size, value)
                self._vectors_changed()

    # --- common configuration -------------------------------------------------------------

    def _selected(self) -> SplitQueue | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def _common_read(self, offset: int, size: int) -> int:
        q = self._selected()
        features = self.device.device_features >> (32 * self.dfselect) if self.dfselect < 2 else 0
        image = _COMMON.pack(
            self.dfselect, features & 0xFFFF_FFFF, self.gfselect,
            (self.driver_features >> (32 * self.gfselect)) & 0xFFFF_FFFF if self.gfselect < 2
            else 0,
            self.config_vector, len(self.queues), self.status, 0, self.queue_select,
            q.size if q else 0, self.queue_vectors[self.queue_select] if q else NO_VECTOR,
            int(q.ready) if q else 0, self.queue_select if q else 0,
            q.desc_addr if q else 0, q.avail_addr if q else 0, q.used_addr if q else 0,
        )  # fmt: skip
        return int.from_bytes(image[offset : offset + size], "little")

    def _common_write(self, offset: int, size: int, value: int) -> None:
        q = self._selected()
        # Each register takes only its own width (4.1.4.3.1: accesses match the field width).
        value &= 0xFFFF if 0x10 <= offset < 0x20 and offset != STATUS else 0xFFFF_FFFF
        match offset:
            case 0x00:
                self.dfselect = value
            case 0x08:
                self.gfselect = value
            case 0x0C if self.gfselect < 2 and not self.status & FEATURES_OK:
                shift = 32 * self.gfselect
                kept = self.driver_features & ~(0xFFFF_FFFF << shift)
                self.driver_features = kept | (value << shift)
            case 0x10:
                self.config_vector = value if value < self.msix.count else NO_VECTOR
            case 0x14:
                self._set_status(value & 0xFF)
            case 0x16:
                self.queue_select = value
            case 0x18 if q and not q.ready:
                q.size = value
            case 0x1A if q:
                self.queue_vectors[self.queue_select] = (
                    value if value < self.msix.count else NO_VECTOR
                )
            case 0x1C if q and value == 1 and not q.ready:
                self._enable_queue(self.queue_select, q)
            case 0x20 | 0x24 | 0x28 | 0x2C | 0x30 | 0x34 if q and not q.ready and size == 4:
                attr = ("desc_addr", "avail_addr", "used_addr")[(offset - 0x20) // 8]
                shift = 32 * (offset % 8 // 4)
                old = getattr(q, attr) & ~(0xFFFF_FFFF << shift)
                setattr(q, attr, old | (value << shift))

    def _set_status(self, value: int) -> None:
        if value == 0:
            self.device.reset()
            self._unbind()
            self._reset_state()
            if self.device.rings_in_kernel:  # the kernel let go of the kick eventfds
                self._watch_kicks()
            return
        if value & FEATURES_OK and not self.status & FEATURES_OK:
            ok = self.driver_features & ~self.device.device_features == 0
            if not ok or not self.driver_features >> 32 & 1:
                value &= ~FEATURES_OK  # 3.1.1: the driver re-reads and sees it refused
        if value & DRIVER_OK and not self.status & DRIVER_OK:
            self.status = value
            self._activate()
            return
        self.status = value | (self.status & NEEDS_RESET)

    def _enable_queue(self, index: int, q: SplitQueue) -> None:
        try:
            q.activate(self._ram)
        except QueueError as exc:
            self._broken(f"queue {index}: {exc}")
            return
        window = self.bar_window()
        if window is not None:
            addr = window[0] + NOTIFY + NOTIFY_MULTIPLIER * index
            self._doorbells.bind(addr, 2, self._kick_fds[index])
            self._bound.append((addr, self._kick_fds[index]))

    def _unbind(self) -> None:
        for addr, fd in self._bound:
            self._doorbells.unbind(addr, 2, fd)
        self._bound = []

    def _rebind(self) -> None:
        """BAR0 moved or decoding changed: move the doorbells with it."""
        self._unbind()
        window = self.bar_window()
        if window is None:
            return
        for index, q in enumerate(self.queues):
            if q.ready:
                addr = window[0] + NOTIFY + NOTIFY_MULTIPLIER * index
                self._doorbells.bind(addr, 2, self._kick_fds[index])
                self._bound.append((addr, self._kick_fds[index]))

    def _activate(self) -> None:
        for q in self.queues:
            q.indirect = bool(self.driver_features & VIRTIO_F_INDIRECT_DESC)
            q.event_idx = bool(self.driver_features & VIRTIO_F_RING_EVENT_IDX)
        kernel = None
        if self.device.rings_in_kernel:
            for fd in self._kick_fds:  # the kernel reads them now
                self._loop.remove_reader(fd)
            kernel = KernelQueues(list(self._kick_fds), self._regions, self._direct_irqfd,
                                  self._queue_interrupt, *self._shared)  # fmt: skip
        ctx = DeviceContext(
            self._ram,
            self.queues,
            self.driver_features,
            self._loop,
            self._used,
            self._broken,
            self._lock,
            kernel,
        )
        self.device.activate(ctx)
        if kernel is not None:
            return
        for index in range(len(self.queues)):  # anything made available before DRIVER_OK
            self._loop.call_soon(functools.partial(self._kick, index))

    # --- the device I/O loop side ----------------------------------------------------------

    def _on_kick(self, index: int, fd: int) -> None:
        try:
            kicks = os.eventfd_read(fd)
        except BlockingIOError:
            return
        self.counters["kicks"] += kicks
        self.counters["wakeups"] += 1
        self._kick(index)

    def _kick(self, index: int) -> None:
        with self._lock:
            if self.status & DRIVER_OK and not self.status & NEEDS_RESET:
                self.device.kick(index)

    def _used(self, index: int) -> None:
        """Used-buffer notification for queue ``index`` (2.3)."""
        with self._lock:
            if not self.queues[index].notify_needed():
                return
            self.counters["interrupts"] += 1
            self._interrupt(ISR_QUEUE, self.queue_vectors[index])

    def _queue_interrupt(self, index: int) -> None:
        """Queue ``index``'s interrupt, which the kernel found needed (``KernelQueues``)."""
        with self._lock:
            if self.status & DRIVER_OK:
                self.counters["interrupts"] += 1
                self._interrupt(ISR_QUEUE, self.queue_vectors[index])

    def _direct_irqfd(self, index: int) -> int | None:
        return self.msix.direct_fd(self.queue_vectors[index])

    def _vectors_changed(self) -> None:
        if self.status & DRIVER_OK and self.device.ctx is not None:
            self.device.vectors_changed()

    def _broken(self, why: str) -> None:
        with self._lock:
            log.warning("virtio %s: %s", self.device.name, why)
            self.status |= NEEDS_RESET
            self._interrupt(ISR_CONFIG, self.config_vector)

    def _interrupt(self, cause: int, vector: int) -> None:
        self.isr |= cause
        if not self.msix.signal(vector):
            self._intx.drive(True)

    # --- snapshot (vCPUs paused, I/O loop parked) ---------------------------------------------

    _STATE = ("status", "dfselect", "gfselect", "driver_features", "config_vector",
              "queue_select", "queue_vectors", "isr")  # fmt: skip

    def save_state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "device": self.device.name,
                **{n: getattr(self, n) for n in self._STATE},
                "intx": self._intx.level,
                "pci_config": self.config.data.hex(),
                "device_config": self.device.config.hex(),
                "msix": self.msix.save_state(),
                "queues": [q.save_state() for q in self.queues],
            }

    def load_state(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`save_state` saw, on a device just made for the same slot;
        an active device is activated again and its queues looked at (a kick the guest
        made just before the snapshot may not have been served yet). ValueError if the
        state does not fit this device."""
        if state["device"] != self.device.name or len(state["queues"]) != len(self.queues):
            raise ValueError(f"saved {state['device']} does not fit {self.device.name}")
        with self._lock:
            self.config.data[:] = bytes.fromhex(state["pci_config"])
            self.device.config[:] = bytes.fromhex(state["device_config"])
            self.msix.load_state(state["msix"])
            for n in self._STATE:
                setattr(self, n, state[n])
            self.queue_vectors = list(state["queue_vectors"])
            for index, (q, saved) in enumerate(zip(self.queues, state["queues"], strict=True)):
                try:
                    q.load_state(saved, self._ram)
                except QueueError as exc:
                    raise ValueError(f"{self.device.name} queue {index}: {exc}") from None
            self._rebind()
            self._intx.drive(bool(state["intx"]))
            if self.status & DRIVER_OK and not self.status & NEEDS_RESET:
                self._activate()

    def report(self) -> dict[str, object]:
        """The device's own status, then the transport's counters (control ``status``)."""
        with self._lock:
            return {**self.device.status(), **self.counters}

    def close(self) -> None:
        with self._lock:
            self.device.reset()
            self._unbind()
            for q in self.queues:
                q.release()
        for fd in self._kick_fds:
            self._loop.remove_reader(fd)
            os.close(fd)
        self._kick_fds = []


def _vendor_cap(cfg_type: int, offset: int, length: int) -> bytes:
    """struct virtio_pci_cap after cap_vndr/cap_next (4.1.4): len, type, bar, id, pad, ..."""
    cap_len = 16 + (4 if cfg_type == CFG_NOTIFY else 0)
    return struct.pack("<BBBB2xII", cap_len, cfg_type, 0, 0, offset, length)
