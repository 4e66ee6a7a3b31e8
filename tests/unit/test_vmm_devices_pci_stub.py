"""PCI config mechanism #1: absent functions read all ones, and Linux's probe stays short.

``linux_probe`` replays what Linux 6.1 does on x86 at boot (arch/x86/pci/direct.c
``pci_direct_probe`` with ``pci_sanity_check`` on a machine without DMI, then
arch/x86/kernel/early-quirks.c ``early_pci_scan_bus(0)``) and counts the port exits.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from qumran.vmm.devices import PioBus
from qumran.vmm.devices.legacy.pci_stub import PCI_CONFIG_BASE, PCI_CONFIG_PORTS, PciConfigStub


@dataclass
class CountingBus:
    bus: PioBus
    exits: int = 0

    def inp(self, port: int, size: int) -> int:
        self.exits += 1
        return self.bus.read(port, size)

    def out(self, port: int, size: int, value: int) -> None:
        self.exits += 1
        self.bus.write(port, size, value)

    def conf1_read(self, devfn: int, reg: int, size: int) -> int:
        self.out(0xCF8, 4, 0x8000_0000 | devfn << 8 | (reg & ~3))
        return self.inp(0xCFC + (reg & 3), size)


def sanity_check(b: CountingBus) -> bool:
    for devfn in range(256):
        if b.conf1_read(devfn, 0x0A, 2) in (0x0600, 0x0300):  # host bridge, VGA
            return True
        if b.conf1_read(devfn, 0x00, 2) in (0x8086, 0x0E11):  # Intel, Compaq
            return True
    return False


def linux_probe(bus: PioBus) -> tuple[int, int]:
    """(config mechanism found: 1, 2 or 0, exits it took)."""
    b = CountingBus(bus)
    b.out(0xCFB, 1, 0x01)
    saved = b.inp(0xCF8, 4)
    b.out(0xCF8, 4, 0x8000_0000)
    found = 1 if b.inp(0xCF8, 4) == 0x8000_0000 and sanity_check(b) else 0
    b.out(0xCF8, 4, saved)
    if not found:
        b.out(0xCFB, 1, 0x00)
        b.out(0xCF8, 1, 0x00)
        b.out(0xCFA, 1, 0x00)
        if b.inp(0xCF8, 1) == 0 and b.inp(0xCFA, 1) == 0:
            found = 2  # our stub never claims mechanism #2
    for slot in range(32):  # early quirks scan, mechanism #1 regardless
        for func in range(8):
            devfn = slot << 3 | func
            if b.conf1_read(devfn, 0x0A, 2) == 0xFFFF:
                break
            b.conf1_read(devfn, 0x00, 2)  # vendor and device, for the quirk table
            b.conf1_read(devfn, 0x02, 2)
            b.conf1_read(devfn, 0x0E, 1)  # header type; Linux goes on to the next function
    return found, b.exits


def bus_with(stub: PciConfigStub | None) -> PioBus:
    bus = PioBus()
    if stub is not None:
        bus.register(PCI_CONFIG_BASE, PCI_CONFIG_PORTS, stub)
    return bus


def test_host_bridge_makes_conf1_work_in_few_exits() -> None:
    found, exits = linux_probe(bus_with(PciConfigStub()))
    assert found == 1
    assert exits < 100


def test_plain_empty_bus_costs_the_full_sanity_scan() -> None:
    found, exits = linux_probe(bus_with(PciConfigStub(host_bridge=False)))
    assert found == 0
    assert exits > 1000  # why the host bridge is the default


def test_no_stub_at_all_fails_fast() -> None:
    found, exits = linux_probe(bus_with(None))
    assert found == 0
    assert exits < 100


@pytest.fixture
def bus() -> PioBus:
    return bus_with(PciConfigStub())


def test_config_address_latches_dwords_only(bus: PioBus) -> None:
    bus.write(0xCF8, 4, 0xFFFF_FFFF)
    assert bus.read(0xCF8, 4) == 0x80FF_FFFC
    assert bus.read(0xCF8, 1) == 0xFF  # byte reads are not CONFIG_ADDRESS
    bus.write(0xCF8, 2, 0)
    assert bus.read(0xCF8, 4) == 0x80FF_FFFC


def test_host_bridge_header(bus: PioBus) -> None:
    bus.write(0xCF8, 4, 0x8000_0000)
    assert bus.read(0xCFC, 4) == 0x0008_1B36
    assert bus.read(0xCFE, 2) == 0x0008
    bus.write(0xCF8, 4, 0x8000_0008)
    assert bus.read(0xCFC, 4) >> 8 == 0x06_00_00
    bus.write(0xCF8, 4, 0x8000_000C)
    assert bus.read(0xCFE, 1) == 0  # header type 0, single function


@pytest.mark.parametrize("address", [0x8000_0100, 0x8000_0800, 0x8001_0000, 0x0000_0000])
def test_everything_else_reads_all_ones(bus: PioBus, address: int) -> None:
    bus.write(0xCF8, 4, address)
    assert bus.read(0xCFC, 4) == 0xFFFF_FFFF
    assert bus.read(0xCFD, 1) == 0xFF


def test_config_writes_change_nothing(bus: PioBus) -> None:
    bus.write(0xCF8, 4, 0x8000_0000)
    bus.write(0xCFC, 4, 0)
    assert bus.read(0xCFC, 2) == 0x1B36


def test_reset_control_register() -> None:
    resets: list[int] = []
    bus = bus_with(PciConfigStub(on_reset=lambda: resets.append(1)))
    bus.write(0xCF9, 1, 0x02)
    assert resets == []
    bus.write(0xCF9, 1, 0x06)
    assert resets == [1]
