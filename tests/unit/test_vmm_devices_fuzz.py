"""Hostile guests: any sequence of port accesses leaves every device standing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from qumran.vmm.devices import PioBus
from qumran.vmm.devices.legacy import I8042, AcpiPm, CmosRtc, PciConfigStub, Serial16550

INTERESTING = [
    *range(0x3F8, 0x400),
    0x60,
    0x64,
    0x70,
    0x71,
    *range(0x600, 0x60A),
    0x80,
    *range(0xCF8, 0xD00),
]
port = st.one_of(st.sampled_from(INTERESTING), st.integers(0, 0xFFFF))
access = st.tuples(st.booleans(), port, st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFF_FFFF))


class Line:
    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_level(self, high: bool) -> None:
        self.levels.append(high)


def machine() -> tuple[PioBus, Line, Line, Serial16550, AcpiPm]:
    com1, sci = Line(), Line()
    out = bytearray()
    bus = PioBus()
    uart = Serial16550(com1, out.extend)
    pm = AcpiPm(sci, lambda: None, lambda: None)
    kbc = I8042(lambda: None)
    bus.register(0x3F8, 8, uart)
    bus.register(0x70, 2, CmosRtc(lambda: 1_800_000_000.0))
    bus.register(0x60, 1, kbc)
    bus.register(0x64, 1, kbc)
    bus.register(0x600, 9, pm)
    bus.register(0xCF8, 8, PciConfigStub(on_reset=lambda: None))
    return bus, com1, sci, uart, pm


def no_repeated_levels(line: Line) -> bool:
    """Lines are only driven on changes, so every call is a real edge."""
    return all(a != b for a, b in zip(line.levels, line.levels[1:], strict=False))


@settings(max_examples=300, deadline=None)
@given(st.lists(access, max_size=200), st.lists(st.binary(max_size=20), max_size=5))
def test_random_port_traffic_never_raises(
    accesses: list[tuple[bool, int, int, int]], inputs: list[bytes]
) -> None:
    bus, com1, sci, uart, pm = machine()
    for i, (is_write, p, size, value) in enumerate(accesses):
        if inputs and i % 17 == 0:
            uart.feed(inputs[i % len(inputs)])
        if i % 29 == 0:
            pm.press_power_button()
        if is_write:
            bus.write(p, size, value)
        else:
            assert 0 <= bus.read(p, size) < 1 << (8 * size)
    assert no_repeated_levels(com1)
    assert no_repeated_levels(sci)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 255), st.booleans()), max_size=300))
def test_uart_line_is_high_exactly_when_iir_reports_an_interrupt(
    ops: list[tuple[int, int, bool]],
) -> None:
    line = Line()
    uart = Serial16550(line, lambda _: None)
    for reg, value, is_write in ops:
        if is_write:
            uart.pio_write(reg, 1, value)
        else:
            uart.pio_read(reg, 1)
        high = bool(line.levels) and line.levels[-1]
        iir = uart.pio_read(2, 1)  # IIR does not depend on DLAB
        assert high == (not iir & 0x01)
