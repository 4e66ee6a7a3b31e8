"""PCI configuration mechanism #1 at 0xCF8-0xCFF, with at most a host bridge behind it.

PCI Local Bus Specification 3.0, 3.2.2.3.2 "Software Generation of Configuration
Transactions": a dword write to 0xCF8 (CONFIG_ADDRESS) selects enable bit 31, bus 23:16,
device 15:11, function 10:8 and register 7:2; 0xCFC-0xCFF (CONFIG_DATA) then reads or
writes that dword in any width. Byte/word accesses to 0xCF8-0xCFB are not CONFIG_ADDRESS;
0xCF9 is the PIIX/ICH reset control register (bit 2 RST_CPU), which ``reboot=pci`` uses.

Why a host bridge and not only "no device" (Linux ``arch/x86/pci/direct.c``): once
CONFIG_ADDRESS reads back what was written, ``pci_check_type1`` runs ``pci_sanity_check``,
which on a machine without DMI tables looks for a host bridge or VGA class on bus 0: with
nothing there it reads all 256 functions (about 1,000 exits) before giving up. A host bridge
at 00:00.0 ends that check on its first read, so the probe costs a handful of exits and the
guest gets working config-space access. ``host_bridge=False`` gives the plain empty bus.
Either way, every absent function reads all ones, as on real hardware. Configuration
space is read-only here: there is nothing to configure.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the VMM's run time
    from typing import Any

PCI_CONFIG_BASE = 0xCF8
PCI_CONFIG_PORTS = 8
_ADDRESS, _RESET_CONTROL, _DATA = 0, 1, 4
CONFIG_ENABLE = 1 << 31
RESET_CPU = 0x04

# The host bridge's configuration header (PCI 3.0, 6.1 "Configuration Space Organization").
# 1b36:0008 is the generic host bridge ID assigned for virtual machines; Linux carries no
# quirk for it. Class 06/00/00 = bridge / host bridge; header type 0, single function.
HOST_BRIDGE_VENDOR, HOST_BRIDGE_DEVICE = 0x1B36, 0x0008
HOST_BRIDGE_CLASS = 0x06_00_00


def _host_bridge_header() -> bytes:
    space = bytearray(256)
    struct.pack_into("<HHHH", space, 0, HOST_BRIDGE_VENDOR, HOST_BRIDGE_DEVICE, 0, 0)
    struct.pack_into("<I", space, 8, HOST_BRIDGE_CLASS << 8)  # revision 0 in the low byte
    return bytes(space)


class PciConfigStub:
    """CONFIG_ADDRESS/CONFIG_DATA with bus 0 holding a host bridge (or nothing). Thread-safe."""

    def __init__(
        self, host_bridge: bool = True, on_reset: Callable[[], None] | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._address = 0
        self._bridge = _host_bridge_header() if host_bridge else None
        self._on_reset = on_reset

    def save_state(self) -> dict[str, object]:
        return {"address": self._address}

    def load_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._address = state["address"]

    def pio_read(self, offset: int, size: int) -> int:
        ones = (1 << (8 * size)) - 1
        with self._lock:
            if offset == _ADDRESS and size == 4:
                return self._address
            if offset >= _DATA:
                return self._read_config(offset - _DATA, size)
        return ones

    def pio_write(self, offset: int, size: int, value: int) -> None:
        if offset == _ADDRESS and size == 4:
            with self._lock:
                self._address = value & 0x80FF_FFFC  # reserved bits 30:24 and 1:0 read 0
        elif offset == _RESET_CONTROL and size == 1 and value & RESET_CPU and self._on_reset:
            self._on_reset()
        # Writes to CONFIG_DATA go nowhere: the one function there is is read-only.

    def _read_config(self, byte: int, size: int) -> int:
        ones = (1 << (8 * size)) - 1
        addr = self._address
        if not addr & CONFIG_ENABLE or self._bridge is None:
            return ones
        if addr & 0x00FF_FF00:  # bus, device or function other than 00:00.0
            return ones
        reg = (addr & 0xFC) + byte
        if reg + size > len(self._bridge):
            return ones
        return int.from_bytes(self._bridge[reg : reg + size], "little")
