"""CMOS RTC, i8042 and ACPI PM fixed hardware, each against a fixed clock or fake lines."""

from __future__ import annotations

import calendar

import pytest

from qumran.vmm.acpi import constants as platform
from qumran.vmm.devices import PioBus
from qumran.vmm.devices.legacy import I8042, AcpiPm, CmosRtc
from qumran.vmm.devices.legacy import pm as pmbits

# 2026-11-25 19:47:48 UTC, a Wednesday
FIXED = calendar.timegm((2026, 11, 25, 19, 47, 48, 0, 0, 0))


class Line:
    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_level(self, high: bool) -> None:
        self.levels.append(high)

    @property
    def high(self) -> bool:
        return bool(self.levels) and self.levels[-1]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- RTC ------------------------------------------------------------------------------------


def cmos(rtc: CmosRtc, index: int) -> int:
    rtc.pio_write(0, 1, index)
    return rtc.pio_read(1, 1)


def cmos_set(rtc: CmosRtc, index: int, value: int) -> None:
    rtc.pio_write(0, 1, index)
    rtc.pio_write(1, 1, value)


TIME_REGS = (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32)


def test_rtc_reads_bcd_24h_after_reset() -> None:
    rtc = CmosRtc(Clock(FIXED))
    values = [cmos(rtc, i) for i in TIME_REGS]
    assert values == [0x48, 0x47, 0x19, 4, 0x25, 0x11, 0x26, 0x20]


def test_rtc_binary_mode() -> None:
    rtc = CmosRtc(Clock(FIXED))
    cmos_set(rtc, 0x0B, cmos(rtc, 0x0B) | 0x04)
    values = [cmos(rtc, i) for i in TIME_REGS]
    assert values == [48, 47, 19, 4, 25, 11, 26, 20]


def test_rtc_12_hour_mode_marks_pm() -> None:
    rtc = CmosRtc(Clock(FIXED))
    cmos_set(rtc, 0x0B, 0x00)  # BCD, 12-hour
    assert cmos(rtc, 0x04) == 0x80 | 0x07


def test_rtc_update_in_progress_is_never_set_and_time_is_valid() -> None:
    rtc = CmosRtc(Clock(FIXED))
    assert not cmos(rtc, 0x0A) & 0x80
    assert cmos(rtc, 0x0D) & 0x80
    assert cmos(rtc, 0x0C) == 0


def test_rtc_follows_the_clock() -> None:
    clock = Clock(FIXED)
    rtc = CmosRtc(clock)
    clock.now += 13
    assert (cmos(rtc, 0x02), cmos(rtc, 0x00)) == (0x48, 0x01)


def test_rtc_guest_sets_time_with_set_bit() -> None:
    clock = Clock(FIXED)
    rtc = CmosRtc(clock)
    cmos_set(rtc, 0x0B, 0x82)  # SET: updates stop, writes go to the frozen copy (2028: leap)
    for index, value in ((0x09, 0x28), (0x08, 0x02), (0x07, 0x29), (0x04, 0x08), (0x02, 0x00)):
        cmos_set(rtc, index, value)
    cmos_set(rtc, 0x00, 0x00)
    clock.now += 100  # frozen while SET
    assert cmos(rtc, 0x00) == 0x00
    cmos_set(rtc, 0x0B, 0x02)  # release: the clock runs from the new time
    clock.now += 5
    assert [cmos(rtc, i) for i in (0x09, 0x08, 0x07, 0x04, 0x02, 0x00)] == [
        0x28, 0x02, 0x29, 0x08, 0x00, 0x05,
    ]  # fmt: skip


def test_rtc_impossible_date_is_ignored() -> None:
    rtc = CmosRtc(Clock(FIXED))
    cmos_set(rtc, 0x08, 0x13)  # month 13
    assert cmos(rtc, 0x08) == 0x11


def test_cmos_ram_and_index_port() -> None:
    rtc = CmosRtc(Clock(FIXED))
    cmos_set(rtc, 0x40, 0xA5)
    assert cmos(rtc, 0x40) == 0xA5
    cmos_set(rtc, 0x80 | 0x41, 0x5A)  # bit 7 of the index is the NMI mask, not address
    assert cmos(rtc, 0x41) == 0x5A
    assert rtc.pio_read(0, 1) == 0xFF


# -- i8042 ----------------------------------------------------------------------------------


@pytest.fixture
def kbc() -> tuple[PioBus, list[str]]:
    resets: list[str] = []
    bus = PioBus()
    dev = I8042(lambda: resets.append("reset"))
    bus.register(0x60, 1, dev)
    bus.register(0x64, 1, dev)
    return bus, resets


def test_i8042_input_buffer_always_empty(kbc: tuple[PioBus, list[str]]) -> None:
    bus, _ = kbc
    status = bus.read(0x64, 1)
    assert not status & 0x02  # IBF: kb_wait() returns at once
    assert status & 0x04  # system flag


def test_i8042_pulse_reset_command(kbc: tuple[PioBus, list[str]]) -> None:
    bus, resets = kbc
    bus.write(0x64, 1, 0xFE)
    assert resets == ["reset"]


def test_i8042_output_port_reset_line(kbc: tuple[PioBus, list[str]]) -> None:
    bus, resets = kbc
    bus.write(0x64, 1, 0xD1)
    bus.write(0x60, 1, 0x03)  # reset line stays high
    assert resets == []
    bus.write(0x64, 1, 0xD1)
    bus.write(0x60, 1, 0x02)
    assert resets == ["reset"]


def test_i8042_self_test_and_config_byte(kbc: tuple[PioBus, list[str]]) -> None:
    bus, _ = kbc
    bus.write(0x64, 1, 0xAA)
    assert bus.read(0x64, 1) & 0x01
    assert bus.read(0x60, 1) == 0x55
    assert not bus.read(0x64, 1) & 0x01
    bus.write(0x64, 1, 0x60)
    bus.write(0x60, 1, 0x47)
    bus.write(0x64, 1, 0x20)
    assert bus.read(0x60, 1) == 0x47


# -- ACPI PM --------------------------------------------------------------------------------


class Pm:
    def __init__(self) -> None:
        self.sci = Line()
        self.events: list[str] = []
        self.dev = AcpiPm(
            self.sci, lambda: self.events.append("poweroff"), lambda: self.events.append("reset")
        )
        self.bus = PioBus()
        self.bus.register(pmbits.PM_BASE, pmbits.PM_LEN, self.dev)

    def sts(self) -> int:
        return self.bus.read(platform.PM1A_EVT, 2)

    def set_en(self, value: int) -> None:
        self.bus.write(platform.PM1A_EVT + 2, 2, value)


def test_power_button_sets_status_without_sci_until_enabled() -> None:
    pm = Pm()
    pm.dev.press_power_button()
    assert pm.sts() & pmbits.PWRBTN_STS
    assert not pm.sci.high
    pm.set_en(pmbits.PWRBTN_STS)  # PWRBTN_EN sits at the same bit
    assert pm.sci.high


def test_power_button_with_enable_raises_sci_and_write_one_clears() -> None:
    pm = Pm()
    pm.set_en(pmbits.PWRBTN_STS)
    pm.dev.press_power_button()
    assert pm.sci.high
    pm.bus.write(platform.PM1A_EVT, 2, 0)  # writing 0 clears nothing
    assert pm.sts() & pmbits.PWRBTN_STS
    pm.bus.write(platform.PM1A_EVT, 2, pmbits.PWRBTN_STS)
    assert not pm.sts() & pmbits.PWRBTN_STS
    assert not pm.sci.high


def test_status_clears_with_a_byte_write_too() -> None:
    pm = Pm()
    pm.dev.press_power_button()
    pm.bus.write(platform.PM1A_EVT + 1, 1, pmbits.PWRBTN_STS >> 8)
    assert pm.sts() == 0


def test_pm1_cnt_is_in_acpi_mode_and_slp_en_reads_zero() -> None:
    pm = Pm()
    assert pm.bus.read(platform.PM1A_CNT, 2) & pmbits.SCI_EN
    pm.bus.write(platform.PM1A_CNT, 2, 0)  # SCI_EN is the hardware's: it stays
    assert pm.bus.read(platform.PM1A_CNT, 2) == pmbits.SCI_EN


def test_s5_sleep_powers_off() -> None:
    pm = Pm()
    slp = platform.SLP_TYP_S5 << 10
    pm.bus.write(platform.PM1A_CNT, 2, slp)  # SLP_TYP alone does nothing
    assert pm.events == []
    pm.bus.write(platform.PM1A_CNT, 2, slp | pmbits.SLP_EN)
    assert pm.events == ["poweroff"]
    assert not pm.bus.read(platform.PM1A_CNT, 2) & pmbits.SLP_EN


def test_other_sleep_types_do_not_power_off() -> None:
    pm = Pm()
    pm.bus.write(platform.PM1A_CNT, 2, (1 << 10) | pmbits.SLP_EN)
    assert pm.events == []


def test_reset_register() -> None:
    pm = Pm()
    pm.bus.write(platform.RESET_PORT, 1, 0x01)
    assert pm.events == []
    pm.bus.write(platform.RESET_PORT, 1, platform.RESET_VALUE)
    assert pm.events == ["reset"]


def test_pm_block_registered_per_fadt_block_sees_the_same_offsets() -> None:
    events: list[str] = []
    dev = AcpiPm(Line(), lambda: events.append("off"), lambda: events.append("reset"))
    bus = PioBus()
    bus.register(platform.PM1A_EVT, platform.PM1_EVT_LEN, dev)
    bus.register(platform.PM1A_CNT, platform.PM1_CNT_LEN, dev)
    bus.register(platform.RESET_PORT, 1, dev)
    bus.write(platform.PM1A_CNT, 2, (platform.SLP_TYP_S5 << 10) | pmbits.SLP_EN)
    bus.write(platform.RESET_PORT, 1, platform.RESET_VALUE)
    assert events == ["off", "reset"]


def test_rtc_calendar_arithmetic_matches_the_calendar_module() -> None:
    """The RTC does its own date arithmetic (the calendar module costs the VMM memory)."""
    import calendar

    from qumran.vmm.devices.legacy import rtc

    for year in (1900, 1969, 1970, 2000, 2024, 2026, 2100, 2400):
        for month in range(1, 13):
            days = calendar.monthrange(year, month)[1]
            assert rtc._days_in_month(year, month) == days
            for day in (1, days):
                expected = calendar.timegm((year, month, day, 0, 0, 0, 0, 0, 0)) // 86400
                assert rtc._days_since_epoch(year, month, day) == expected
