"""The PCI root bridge in the DSDT: without a PNP0A03 device Linux scans no PCI bus.

``_CRS`` hands the bridge its bus numbers, the configuration ports and the windows its
devices' BARs live in (ACPI 6.4, 6.4.3.5 "Address Space Resource Descriptors"); ``_PRT``
routes each slot's INTA to an IOAPIC input for the INTx fallback (6.2.13 "_PRT (PCI Routing
Table)", with Source = 0 so Source Index is a GSI, level-triggered, active-low).
"""

from __future__ import annotations

import struct

from qumran.vmm.acpi import aml
from qumran.vmm.acpi.constants import PCI_MMIO_BASE, PCI_MMIO_END, PCI_SLOTS, pci_intx_gsi

# 6.4.3.5 resource types and flags
RES_MEMORY, RES_IO, RES_BUS = 0, 1, 2
GEN_FLAGS_FIXED = 0x0C  # _MIF | _MAF: a fixed window; bit 0 clear = ResourceProducer
IO_ENTIRE_RANGE = 0x03
MEM_READ_WRITE = 0x01  # non-cacheable, read/write
PCI_CONFIG_PORT, PCI_CONFIG_LEN = 0xCF8, 8


def word_space(kind: int, type_flags: int, lo: int, hi: int) -> bytes:
    """Word Address Space Descriptor (6.4.3.5.3), 16 bytes."""
    body = struct.pack("<BBBHHHHH", kind, GEN_FLAGS_FIXED, type_flags, 0, lo, hi, 0, hi - lo + 1)
    return bytes((0x88,)) + struct.pack("<H", len(body)) + body


def dword_space(kind: int, type_flags: int, lo: int, hi: int) -> bytes:
    """DWord Address Space Descriptor (6.4.3.5.2), 26 bytes."""
    body = struct.pack("<BBBIIIII", kind, GEN_FLAGS_FIXED, type_flags, 0, lo, hi, 0, hi - lo + 1)
    return bytes((0x87,)) + struct.pack("<H", len(body)) + body


def routing_table() -> bytes:
    """_PRT: Package {Address (slot << 16 | 0xFFFF), Pin (0 = INTA), Source 0, GSI}."""
    entries = [
        aml.package(aml.integer(slot << 16 | 0xFFFF), aml.integer(0), aml.integer(0),
                    aml.integer(pci_intx_gsi(slot)))
        for slot in range(1, PCI_SLOTS)
    ]  # fmt: skip
    return aml.name("_PRT", aml.package(*entries))


def root_bridge() -> bytes:
    """Device (PCI0): bus 0 of segment 0, behind configuration mechanism #1."""
    crs = aml.resource_template(
        word_space(RES_BUS, 0, 0x00, 0xFF),
        aml.io_port(PCI_CONFIG_PORT, PCI_CONFIG_LEN),
        word_space(RES_IO, IO_ENTIRE_RANGE, 0x0000, PCI_CONFIG_PORT - 1),
        word_space(RES_IO, IO_ENTIRE_RANGE, 0x0D00, 0xFFFF),
        dword_space(RES_MEMORY, MEM_READ_WRITE, PCI_MMIO_BASE, PCI_MMIO_END),
    )
    return aml.device(
        "PCI0",
        aml.name("_HID", aml.integer(aml.eisa_id("PNP0A03"))),
        aml.name("_ADR", aml.integer(0)),
        aml.name("_UID", aml.integer(0)),
        aml.name("_BBN", aml.integer(0)),
        aml.name("_CRS", crs),
        routing_table(),
    )
