"""Interrupt lines between devices and the VMM core.

A device computes its interrupt condition and drives a level. ISA interrupts (COM1 on IRQ 4)
are edge-triggered at the PIC/IOAPIC: a new interrupt needs a low->high transition, so a
device must lower its line whenever its condition clears. The ACPI SCI (IRQ 9) is
level-triggered (see the MADT interrupt source override in ``qumran.vmm.acpi.tables``).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:  # typing costs every VMM process resident memory; a Protocol matters to checkers only
    Protocol = object


class IrqLine(Protocol):
    """One interrupt input of the interrupt controller (the core uses KVM_IRQ_LINE)."""

    def set_level(self, high: bool) -> None: ...


class NullIrqLine:
    """A line wired to nothing: for devices whose interrupt nobody listens to."""

    def set_level(self, high: bool) -> None:
        return None


class IrqOutput:
    """A device's interrupt pin: remembers the level it drives and passes on changes only.

    Not thread-safe by itself; devices call it while holding their own lock, which also
    keeps the order of level changes on the line the order in which they were computed.
    """

    __slots__ = ("_level", "_line")

    def __init__(self, line: IrqLine) -> None:
        self._line = line
        self._level = False

    @property
    def level(self) -> bool:
        return self._level

    def drive(self, high: bool) -> None:
        if high != self._level:
            self._level = high
            self._line.set_level(high)
