"""The port-I/O bus routes accesses, rejects overlaps and floats unclaimed ports high."""

from __future__ import annotations

import pytest

from qumran.vmm.devices import PioBus, PortConflict


class Recorder:
    """A device that logs accesses and answers with the offset."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int, int, int]] = []

    def pio_read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size, 0))
        return 0x1234_5600 | offset

    def pio_write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size, value))


def test_dispatch_passes_offset_from_range_base() -> None:
    bus, dev = PioBus(), Recorder()
    bus.register(0x3F8, 8, dev)
    assert bus.read(0x3FD, 1) == 0x05
    bus.write(0x3F8, 1, 0x41)
    assert dev.log == [("r", 5, 1, 0), ("w", 0, 1, 0x41)]


@pytest.mark.parametrize(("base", "length"), [(0x3F8, 8), (0x3F0, 9), (0x3FF, 1), (0x300, 0x200)])
def test_overlapping_ranges_are_rejected(base: int, length: int) -> None:
    bus = PioBus()
    bus.register(0x3F8, 8, Recorder())
    with pytest.raises(ValueError):
        bus.register(base, length, Recorder())
    with pytest.raises(PortConflict):
        bus.register(base, length, Recorder())


def test_adjacent_ranges_are_fine() -> None:
    bus = PioBus()
    bus.register(0x3F8, 8, Recorder())
    bus.register(0x3F0, 8, Recorder())
    bus.register(0x400, 1, Recorder())
    assert [r.base for r in bus.ranges] == [0x3F0, 0x3F8, 0x400]


@pytest.mark.parametrize(("base", "length"), [(-1, 2), (0xFFFF, 2), (0x10, 0)])
def test_ranges_outside_the_port_space_are_rejected(base: int, length: int) -> None:
    with pytest.raises(PortConflict):
        PioBus().register(base, length, Recorder())


@pytest.mark.parametrize(("size", "ones"), [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)])
def test_unclaimed_ports_read_all_ones(size: int, ones: int) -> None:
    bus = PioBus()
    bus.register(0x70, 2, Recorder())
    assert bus.read(0x80, size) == ones
    bus.write(0x80, size, 0)  # ignored, no error


def test_reads_and_writes_are_cut_to_the_access_size() -> None:
    bus, dev = PioBus(), Recorder()
    bus.register(0x10, 4, dev)
    assert bus.read(0x12, 1) == 0x02
    assert bus.read(0x12, 2) == 0x5602
    bus.write(0x10, 2, 0xABCDEF)
    assert dev.log[-1] == ("w", 0, 2, 0xCDEF)


def test_bad_access_size_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        PioBus().read(0x10, 3)
    with pytest.raises(ValueError):
        PioBus().write(0x10, 8, 0)


def test_device_registered_twice_sees_one_offset_space() -> None:
    bus, kbc = PioBus(), Recorder()
    bus.register(0x64, 1, kbc)  # order does not matter: offsets count from the lowest base
    bus.register(0x60, 1, kbc)
    bus.read(0x60, 1)
    bus.read(0x64, 1)
    assert [entry[1] for entry in kbc.log] == [0, 4]
    assert bus.read(0x62, 1) == 0xFF  # the gap stays unclaimed
