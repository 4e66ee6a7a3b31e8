"""The CMOS real-time clock (MC146818-compatible) at ports 0x70 (index) and 0x71 (data).

Register layout: Motorola MC146818A datasheet, "Address Map"; Linux
``include/linux/mc146818rtc.h``. The clock keeps UTC (what Linux on x86 assumes by
default) as the host clock plus an offset that the guest may change by writing the time.

  0x00 seconds   0x02 minutes   0x04 hours   0x06 day of week (1 = Sunday)
  0x07 day       0x08 month     0x09 year    0x32 century (named by the FADT CENTURY field)
  0x01/0x03/0x05 alarms (plain storage)
  0x0A register A: UIP (bit 7) always 0, so a reader never waits for an update cycle
  0x0B register B: SET (7), DM binary (2), 24/12 (1); BCD + 24h after reset
  0x0C register C: interrupt flags, always 0 (no alarm/periodic/update interrupts)
  0x0D register D: VRT (bit 7) set, "time and RAM valid"
  other 0x0E..0x7F: battery-backed RAM

While register B SET is 1 the update cycle is inhibited: reads return the frozen time and
writes edit it; clearing SET starts the clock from the edited time (how hwclock sets it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from qumran.vmm.acpi.constants import RTC_CENTURY_INDEX

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the VMM's run time
    from typing import Any

RTC_BASE = 0x70
RTC_PORTS = 2

REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
B_SET, B_BINARY, B_24H = 0x80, 0x04, 0x02
A_UIP = 0x80
D_VRT = 0x80
_HOUR_PM = 0x80

# Time register index -> position in the fields list [sec, min, hour, day, month, year].
_FIELDS = {0x00: 0, 0x02: 1, 0x04: 2, 0x07: 3, 0x08: 4, 0x09: 5}
_DAY_OF_WEEK = 0x06


def _to_bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


# Proleptic Gregorian calendar arithmetic, in place of the calendar module (which costs
# every VMM process half a MiB of imports for these three functions).
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_DAYS_BEFORE_MONTH = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_in_month(year: int, month: int) -> int:
    return 29 if month == 2 and _is_leap(year) else _MONTH_DAYS[month - 1]


def _days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to the given date (negative before it)."""

    def leap_years_through(y: int) -> int:  # leap years in 1..y
        return y // 4 - y // 100 + y // 400

    days = (year - 1970) * 365 + leap_years_through(year - 1) - leap_years_through(1969)
    days += _DAYS_BEFORE_MONTH[month - 1] + (month > 2 and _is_leap(year))
    return days + day - 1


class CmosRtc:
    """CMOS RTC + NVRAM. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ram = bytearray(128)
        self._ram[REG_A] = 0x26  # 32.768 kHz time base, 1.024 kHz periodic rate
        self._ram[REG_B] = B_24H
        self._index = 0
        self._offset = 0.0
        self._frozen: list[int] | None = None  # the fields while SET is 1

    def save_state(self) -> dict[str, object]:
        """The guest's clock is kept as an offset from the host's: after a restore it
        reads the host's time plus that offset, as a real RTC keeps running when off."""
        with self._lock:
            return {"ram": list(self._ram), "index": self._index, "offset": self._offset,
                    "frozen": self._frozen}  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._ram = bytearray(state["ram"])
            self._index, self._offset, self._frozen = (
                state["index"], state["offset"], state["frozen"])  # fmt: skip

    def pio_read(self, offset: int, size: int) -> int:
        if offset != 1:
            return (1 << (8 * size)) - 1  # the index port is write-only
        with self._lock:
            return self._read(self._index)

    def pio_write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            if offset == 0:
                self._index = value & 0x7F  # bit 7 masks NMI; nothing to mask here
            elif offset == 1:
                self._write(self._index, value & 0xFF)

    # -- registers (called with the lock held) ---------------------------------------

    def _read(self, index: int) -> int:
        if index in _FIELDS or index in (_DAY_OF_WEEK, RTC_CENTURY_INDEX):
            return self._read_time(index)
        if index == REG_A:
            return self._ram[REG_A] & ~A_UIP & 0xFF
        if index == REG_C:
            return 0
        if index == REG_D:
            return D_VRT
        return self._ram[index]

    def _write(self, index: int, value: int) -> None:
        if index in _FIELDS or index == RTC_CENTURY_INDEX:
            self._write_time(index, value)
        elif index == REG_B:
            self._write_b(value)
        elif index == REG_A:
            self._ram[REG_A] = value & 0x7F
        elif index not in (REG_C, REG_D, _DAY_OF_WEEK):
            self._ram[index] = value  # alarms and NVRAM (day of week follows the date)

    def _write_b(self, value: int) -> None:
        was_set = bool(self._ram[REG_B] & B_SET)
        if value & B_SET and not was_set:
            self._frozen = self._now_fields()
        elif was_set and not value & B_SET and self._frozen is not None:
            self._set_time(self._frozen)
            self._frozen = None
        self._ram[REG_B] = value

    # -- time ------------------------------------------------------------------------

    def _now_fields(self) -> list[int]:
        t = time.gmtime(self._clock() + self._offset)
        return [t.tm_sec, t.tm_min, t.tm_hour, t.tm_mday, t.tm_mon, t.tm_year]

    def _fields(self) -> list[int]:
        return self._frozen if self._frozen is not None else self._now_fields()

    def _set_time(self, fields: list[int]) -> None:
        sec, minute, hour, day, month, year = fields
        if not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month):
            return  # an impossible date: keep the clock as it was
        if not (hour < 24 and minute < 60 and sec < 60):
            return
        target = _days_since_epoch(year, month, day) * 86400 + hour * 3600 + minute * 60 + sec
        self._offset = target - self._clock()

    def _read_time(self, index: int) -> int:
        fields = self._fields()
        binary = bool(self._ram[REG_B] & B_BINARY)
        if index == _DAY_OF_WEEK:
            day, month, year = fields[3:]
            # 1970-01-01 was a Thursday; the RTC counts Sunday = 1, so Thursday = 5.
            return (_days_since_epoch(year, month, day) + 4) % 7 + 1
        if index == RTC_CENTURY_INDEX:
            value = fields[5] // 100
        elif index == 0x09:
            value = fields[5] % 100
        else:
            value = fields[_FIELDS[index]]
        pm = 0
        if index == 0x04 and not self._ram[REG_B] & B_24H:
            pm = _HOUR_PM if value >= 12 else 0
            value = value % 12 or 12
        return (value if binary else _to_bcd(value)) | pm

    def _write_time(self, index: int, raw: int) -> None:
        binary = bool(self._ram[REG_B] & B_BINARY)
        pm = False
        if index == 0x04 and not self._ram[REG_B] & B_24H:
            pm = bool(raw & _HOUR_PM)
            raw &= ~_HOUR_PM
        value = raw if binary else _from_bcd(raw)
        fields = list(self._fields())
        if index == 0x04 and not self._ram[REG_B] & B_24H:
            value = value % 12 + (12 if pm else 0)
        if index == RTC_CENTURY_INDEX:
            fields[5] = value * 100 + fields[5] % 100
        elif index == 0x09:
            fields[5] = fields[5] // 100 * 100 + value
        else:
            fields[_FIELDS[index]] = value
        if self._frozen is not None:
            self._frozen = fields
        else:
            self._set_time(fields)
