"""The port-I/O bus: routes the guest's IN/OUT exits to the device owning the port.

Lookup runs once per exit, on a vCPU thread, so it is one dict lookup of a port that was
resolved at registration time to (origin, bound read method, bound write method). The table
is built before the vCPUs start and only read afterwards; devices lock their own state.

Offsets: a device sees ``port - origin``, where origin is the lowest base the device was
registered at. For a device registered once that is simply the offset from its range base
(``register(0x3F8, 8, uart)`` -> offsets 0..7). A device registered at several bases sees one
offset space: the i8042 at 0x60 and 0x64 sees offsets 0 and 4, the ACPI PM block registered
as 0x600/4 + 0x604/2 sees 0..5, exactly as if it had been registered as one range.

An unclaimed port behaves like an empty ISA bus: reads float to all ones, writes vanish.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from qumran.vmm.devices.errors import PortConflict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:  # typing costs every VMM process resident memory; a Protocol matters to checkers only
    Protocol = object

PORT_SPACE = 0x10000
_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF}


class PioDevice(Protocol):
    """A device on the port-I/O bus. Must never raise for any offset, size or value."""

    def pio_read(self, offset: int, size: int) -> int: ...

    def pio_write(self, offset: int, size: int, value: int) -> None: ...


class PioRange:
    """One registered range, for listings and diagnostics."""

    __slots__ = ("base", "device", "length")

    def __init__(self, base: int, length: int, device: PioDevice) -> None:
        self.base = base
        self.length = length
        self.device = device

    @property
    def end(self) -> int:
        return self.base + self.length


_Entry = tuple[int, Callable[[int, int], int], Callable[[int, int, int], None]]


class PioBus:
    """Maps I/O ports 0..0xFFFF to devices; see the module docstring for offsets."""

    def __init__(self) -> None:
        self._table: dict[int, _Entry] = {}
        self._ranges: list[PioRange] = []
        self._lock = threading.Lock()

    @property
    def ranges(self) -> tuple[PioRange, ...]:
        return tuple(sorted(self._ranges, key=lambda r: r.base))

    def register(self, base: int, length: int, device: PioDevice) -> None:
        """Give ``device`` the ports ``base .. base+length-1``.

        Raises PortConflict (a ValueError) if the range is empty, leaves the port space or
        overlaps a range already registered.
        """
        if length < 1 or base < 0 or base + length > PORT_SPACE:
            raise PortConflict(f"I/O range {base:#x}+{length} is outside ports 0..0xffff")
        with self._lock:
            for r in self._ranges:
                if base < r.end and r.base < base + length:
                    raise PortConflict(
                        f"I/O range {base:#x}-{base + length - 1:#x} overlaps "
                        f"{r.base:#x}-{r.end - 1:#x} ({type(r.device).__name__})"
                    )
            self._ranges.append(PioRange(base, length, device))
            self._rebuild(device)

    def _rebuild(self, device: PioDevice) -> None:
        mine = [r for r in self._ranges if r.device is device]
        origin = min(r.base for r in mine)
        entry: _Entry = (origin, device.pio_read, device.pio_write)
        for r in mine:
            for port in range(r.base, r.end):
                self._table[port] = entry

    def read(self, port: int, size: int) -> int:
        """An IN of ``size`` bytes (1, 2 or 4) from ``port``."""
        mask = _MASKS.get(size)
        if mask is None:
            raise ValueError(f"port access size must be 1, 2 or 4, not {size}")
        entry = self._table.get(port)
        if entry is None:
            return mask
        origin, read, _ = entry
        return read(port - origin, size) & mask

    def write(self, port: int, size: int, value: int) -> None:
        """An OUT of ``size`` bytes (1, 2 or 4) to ``port``; extra value bits are dropped."""
        mask = _MASKS.get(size)
        if mask is None:
            raise ValueError(f"port access size must be 1, 2 or 4, not {size}")
        entry = self._table.get(port)
        if entry is not None:
            origin, _, write = entry
            write(port - origin, size, value & mask)
