"""ACPI fixed hardware: the PM1a event and control blocks and the reset register.

Layout (ports in ``qumran.vmm.acpi.constants``; offsets from PM_BASE = 0x600):

  0-1  PM1_STS  write-1-to-clear status   (ACPI 6.4, 4.8.4.1.1, table "PM1 Status Registers")
  2-3  PM1_EN   enables                   (ACPI 6.4, 4.8.4.1.2)
  4-5  PM1_CNT  SCI_EN, SLP_TYP, SLP_EN   (ACPI 6.4, 4.8.4.2.1)
  8    RESET_REG, write RESET_VALUE       (ACPI 6.4, 4.8.4.6)

The guest is in ACPI mode from power-on: SCI_EN reads 1 and the FADT's SMI_CMD is 0, so
the OS never tries the SMI handshake. The power button is the fixed-feature one (ACPI 6.4,
4.8.3.1.1.1 "Fixed Power Button"): pressing sets PWRBTN_STS, and the SCI (IRQ 9, level,
active high per the MADT) is asserted while any enabled status bit is set. Writing SLP_EN
with the SLP_TYP of \\_S5 powers off; writing RESET_VALUE to the reset register resets.
Any access width works: registers are handled byte by byte, which keeps write-1-to-clear
exact for byte, word and dword writes alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from qumran.vmm.acpi.constants import (
    PM1A_CNT,
    PM1A_EVT,
    PM_BASE,
    PM_LEN,
    RESET_PORT,
    RESET_VALUE,
    SLP_TYP_S5,
)
from qumran.vmm.devices.irq import IrqLine, IrqOutput

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the VMM's run time
    from typing import Any

# PM1_STS / PM1_EN bits (the same positions in both registers)
TMR_STS = 1 << 0
GBL_STS = 1 << 5
PWRBTN_STS = 1 << 8
SLPBTN_STS = 1 << 9
RTC_STS = 1 << 10
WAK_STS = 1 << 15
_EVENTS = TMR_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS
_EN_WRITABLE = _EVENTS | (1 << 14)  # + PCIEXP_WAKE_DIS
# PM1_CNT bits
SCI_EN = 1 << 0
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 0x7 << SLP_TYP_SHIFT
SLP_EN = 1 << 13
_CNT_WRITABLE = SLP_TYP_MASK | 0x2  # SLP_TYP, BM_RLD; SCI_EN belongs to the hardware

_STS = PM1A_EVT - PM_BASE
_EN = _STS + 2
_CNT = PM1A_CNT - PM_BASE
_RESET = RESET_PORT - PM_BASE

__all__ = ["PM_BASE", "PM_LEN", "PWRBTN_STS", "SCI_EN", "SLP_EN", "AcpiPm"]


class AcpiPm:
    """PM1a_EVT + PM1a_CNT + reset register, registered at PM_BASE for PM_LEN ports."""

    def __init__(
        self,
        sci: IrqLine,
        on_poweroff: Callable[[], None],
        on_reset: Callable[[], None],
    ) -> None:
        self._sci = IrqOutput(sci)
        self._on_poweroff = on_poweroff
        self._on_reset = on_reset
        self._lock = threading.Lock()
        self._sts = 0
        self._en = 0
        self._cnt = SCI_EN

    def save_state(self) -> dict[str, object]:
        with self._lock:
            return {"sts": self._sts, "en": self._en, "cnt": self._cnt}

    def load_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._sts, self._en, self._cnt = state["sts"], state["en"], state["cnt"]
            self._update_sci()

    def press_power_button(self) -> None:
        """The host pressed the power button: the guest's ACPI driver sees a fixed event."""
        with self._lock:
            self._sts |= PWRBTN_STS
            self._update_sci()

    def pio_read(self, offset: int, size: int) -> int:
        with self._lock:
            regs = {_STS: self._sts, _EN: self._en, _CNT: self._cnt}
            value = 0
            for i in range(size):
                off = offset + i
                reg = off & ~1
                byte = (regs[reg] >> (8 * (off & 1))) & 0xFF if reg in regs else 0
                value |= byte << (8 * i)
            return value

    def pio_write(self, offset: int, size: int, value: int) -> None:
        action: Callable[[], None] | None = None
        with self._lock:
            for i in range(size):
                byte = (value >> (8 * i)) & 0xFF
                action = self._write_byte(offset + i, byte) or action
            self._update_sci()
        if action is not None:
            action()  # outside the lock: the VMM stops vCPUs from here

    def _write_byte(self, off: int, byte: int) -> Callable[[], None] | None:
        shift = 8 * (off & 1)
        reg = off & ~1
        if reg == _STS:
            self._sts &= ~(byte << shift)  # write 1 to clear
        elif reg == _EN:
            keep = self._en & ~(0xFF << shift)
            self._en = (keep | (byte << shift)) & _EN_WRITABLE
        elif reg == _CNT:
            keep = self._cnt & ~(0xFF << shift)
            self._cnt = SCI_EN | ((keep | (byte << shift)) & _CNT_WRITABLE)
            if shift and byte << shift & SLP_EN:
                return self._sleep((self._cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT)
        elif off == _RESET and byte == RESET_VALUE:
            return self._on_reset
        return None

    def _sleep(self, slp_typ: int) -> Callable[[], None] | None:
        # Only \_S5 exists in the DSDT, so any other sleep type is not one the OS can ask for.
        return self._on_poweroff if slp_typ == SLP_TYP_S5 else None

    def _update_sci(self) -> None:
        self._sci.drive(bool(self._cnt & SCI_EN and self._sts & self._en & _EVENTS))
