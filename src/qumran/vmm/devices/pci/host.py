"""The PCI host: configuration mechanism #1 on ports 0xCF8-0xCFF, bus 0, and the MMIO
dispatch of the devices' memory BARs.

PCI Local Bus Specification 3.0, 3.2.2.3.2: a dword write to 0xCF8 (CONFIG_ADDRESS) selects
enable bit 31, bus 23:16, device 15:11, function 10:8 and register 7:2; 0xCFC-0xCFF
(CONFIG_DATA) then reads or writes that dword in any width. 0xCF9, written as a byte, is
the PIIX/ICH reset control register (bit 2 RST_CPU), which ``reboot=pci`` uses.

Slot 0 is a host bridge (1b36:0008, class 06/00/00), as in ``legacy/pci_stub.py``: it ends
Linux's ``pci_sanity_check`` on its first read. Slots 1.. hold the devices; every other
function reads all ones.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from qumran.vmm.devices.pci.config import ConfigSpace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol
else:  # typing costs every VMM process resident memory; a Protocol matters to checkers only
    Protocol = object

PCI_CONFIG_BASE = 0xCF8
PCI_CONFIG_PORTS = 8
_ADDRESS, _RESET_CONTROL, _DATA = 0, 1, 4
CONFIG_ENABLE = 1 << 31
RESET_CPU = 0x04
MAX_SLOTS = 32
HOST_BRIDGE_VENDOR, HOST_BRIDGE_DEVICE, HOST_BRIDGE_CLASS = 0x1B36, 0x0008, 0x060000


class PciFunction(Protocol):
    def config_read(self, offset: int, size: int) -> int: ...

    def config_write(self, offset: int, size: int, value: int) -> None: ...

    def bar_window(self) -> tuple[int, int] | None: ...

    def mmio_read(self, offset: int, size: int) -> int: ...

    def mmio_write(self, offset: int, size: int, value: int) -> None: ...


class HostBridge:
    """00:00.0: a header with nothing to configure and no BAR."""

    def __init__(self) -> None:
        self.config = ConfigSpace(HOST_BRIDGE_VENDOR, HOST_BRIDGE_DEVICE, HOST_BRIDGE_CLASS)
        self.config.wmask[:] = bytes(len(self.config.wmask))

    def config_read(self, offset: int, size: int) -> int:
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        return None

    def bar_window(self) -> tuple[int, int] | None:
        return None

    def mmio_read(self, offset: int, size: int) -> int:
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        return None


class PciHost:
    """Bus 0: a port-I/O device for 0xCF8 and the MMIO handler for BARs. Thread-safe."""

    def __init__(self, on_reset: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._address = 0
        self._on_reset = on_reset
        self.slots: list[PciFunction | None] = [None] * MAX_SLOTS
        self.slots[0] = HostBridge()

    def save_state(self) -> dict[str, Any]:
        return {"address": self._address}

    def load_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._address = state["address"]

    def add(self, function: PciFunction) -> int:
        """Put ``function`` in the first free slot; returns the slot number."""
        for slot, existing in enumerate(self.slots):
            if existing is None:
                self.slots[slot] = function
                return slot
        raise ValueError("PCI bus 0 is full")

    # --- PioDevice at 0xCF8 ------------------------------------------------------------

    def pio_read(self, offset: int, size: int) -> int:
        if offset == _ADDRESS and size == 4:
            return self._address
        if offset >= _DATA:
            target = self._target()
            if target is not None:
                function, reg = target
                return function.config_read(reg + offset - _DATA, size)
        return (1 << (8 * size)) - 1

    def pio_write(self, offset: int, size: int, value: int) -> None:
        if offset == _ADDRESS and size == 4:
            with self._lock:
                self._address = value & 0x80FF_FFFC
        elif offset == _RESET_CONTROL and size == 1:
            if value & RESET_CPU and self._on_reset is not None:
                self._on_reset()
        elif offset >= _DATA:
            target = self._target()
            if target is not None:
                function, reg = target
                function.config_write(reg + offset - _DATA, size, value)

    def _target(self) -> tuple[PciFunction, int] | None:
        addr = self._address
        if not addr & CONFIG_ENABLE or addr & 0x00FF_0700:  # bus 0, function 0 only
            return None
        function = self.slots[(addr >> 11) & 0x1F]
        return None if function is None else (function, addr & 0xFC)

    # --- MMIO (vCPU threads) -------------------------------------------------------------

    def _find(self, addr: int) -> tuple[PciFunction, int] | None:
        for function in self.slots:
            if function is None:
                continue
            window = function.bar_window()
            if window is not None and window[0] <= addr < window[0] + window[1]:
                return function, addr - window[0]
        return None

    def mmio_read(self, addr: int, length: int) -> bytes:
        found = self._find(addr)
        if found is None or length not in (1, 2, 4, 8):
            return b"\xff" * length
        function, offset = found
        if length == 8:
            lo, hi = function.mmio_read(offset, 4), function.mmio_read(offset + 4, 4)
            return (lo | hi << 32).to_bytes(8, "little")
        return function.mmio_read(offset, length).to_bytes(length, "little")

    def mmio_write(self, addr: int, data: bytes) -> None:
        found = self._find(addr)
        if found is not None and len(data) in (1, 2, 4, 8):
            function, offset = found
            function.mmio_write(offset, len(data), int.from_bytes(data, "little"))
