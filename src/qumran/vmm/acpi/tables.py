"""Qumran's ACPI tables: RSDP -> XSDT -> {FADT -> (DSDT, FACS), MADT}, built as one blob.

The VMM core writes the blob at ``base`` (layout.ACPI_BASE = 0xE0000): the RSDP sits at its
start, on a 16-byte boundary inside 0xE0000-0xFFFFF, where Linux's legacy scan finds it
(ACPI 6.4, 5.2.5.1 "Finding the RSDP on IA-PC Systems"). Every pointer in the tables is an
absolute guest-physical address inside the blob.

Why these tables: the MADT is what lets Linux start more than one CPU (the cloud kernel has
no MP-table parser) and route IRQs through the IOAPIC; the FADT + DSDT \\_S5 give the guest
an ACPI power-off path (without it ``poweroff`` halts the vCPU and KVM_RUN never returns)
and a reset register for ``reboot``.
"""

from __future__ import annotations

import struct

from qumran.vmm.acpi import aml, pci
from qumran.vmm.acpi.constants import (
    COM1_IRQ,
    IOAPIC_ADDR,
    LOCAL_APIC_ADDR,
    PM1_CNT_LEN,
    PM1_EVT_LEN,
    PM1A_CNT,
    PM1A_EVT,
    PM_BASE,
    PM_LEN,
    RESET_PORT,
    RESET_VALUE,
    RTC_CENTURY_INDEX,
    SCI_IRQ,
    SLP_TYP_S5,
)
from qumran.vmm.acpi.sdt import ACCESS_BYTE, OEM_ID, checksum, gas_io, table

__all__ = [
    "MAX_BLOB",
    "MAX_CPUS",
    "PM1A_CNT",
    "PM1A_EVT",
    "PM_BASE",
    "PM_LEN",
    "RESET_PORT",
    "RESET_VALUE",
    "SCI_IRQ",
    "SLP_TYP_S5",
    "AcpiBlob",
    "build_acpi_tables",
]

MAX_BLOB = 0x20000  # 0xE0000-0xFFFFF
MAX_CPUS = 254  # xAPIC ids are 8 bits and the IOAPIC takes id num_cpus

# -- FADT (ACPI 6.4, 5.2.9, table "FADT Format"): byte offsets of the fields we set ----------
FADT_REVISION, FADT_MINOR = 6, 4
FADT_LEN = 276
FADT_FIRMWARE_CTRL = 36
FADT_DSDT = 40
FADT_SCI_INT = 46
FADT_SMI_CMD = 48
FADT_PM1A_EVT_BLK = 56
FADT_PM1A_CNT_BLK = 64
FADT_PM1_EVT_LEN = 88
FADT_PM1_CNT_LEN = 89
FADT_P_LVL2_LAT = 96
FADT_P_LVL3_LAT = 98
FADT_CENTURY = 108
FADT_IAPC_BOOT_ARCH = 109
FADT_FLAGS = 112
FADT_RESET_REG = 116
FADT_RESET_VALUE = 128
FADT_MINOR_VERSION = 131
FADT_X_DSDT = 140
FADT_X_PM1A_EVT_BLK = 148
FADT_X_PM1A_CNT_BLK = 172
FADT_HYPERVISOR_ID = 268

# IAPC_BOOT_ARCH (5.2.9.3). The 8042 bit stays clear: Linux then does not probe PS/2.
IAPC_LEGACY_DEVICES = 1 << 0
IAPC_VGA_NOT_PRESENT = 1 << 2
# Fixed feature flags (5.2.9, table "Fixed ACPI Description Table Fixed Feature Flags").
F_WBINVD = 1 << 0
F_PROC_C1 = 1 << 2
F_PWR_BUTTON = 1 << 4  # clear: the power button is the fixed-feature one
F_SLP_BUTTON = 1 << 5  # set: no sleep button
F_FIX_RTC = 1 << 6  # set: RTC wake status is not in the fixed registers
F_RESET_REG_SUP = 1 << 10
F_SEALED_CASE = 1 << 11
F_HEADLESS = 1 << 12
F_HW_REDUCED_ACPI = 1 << 20  # clear: we have PM1 fixed hardware
FADT_FLAGS_VALUE = (
    F_WBINVD | F_PROC_C1 | F_SLP_BUTTON | F_FIX_RTC | F_RESET_REG_SUP | F_SEALED_CASE | F_HEADLESS
)

# -- MADT (5.2.12) ------------------------------------------------------------------------
MADT_REVISION = 5
MADT_PCAT_COMPAT = 1  # dual 8259s present (KVM's in-kernel PIC)
MADT_LOCAL_APIC, MADT_IOAPIC, MADT_OVERRIDE, MADT_LAPIC_NMI = 0, 1, 2, 4
LAPIC_ENABLED = 1
# MPS INTI flags (5.2.12.5): polarity bits 1:0, trigger mode bits 3:2.
INTI_CONFORMS = 0x0
INTI_ACTIVE_HIGH_LEVEL = 0x1 | (0x3 << 2)
INTI_ACTIVE_HIGH_EDGE = 0x1 | (0x1 << 2)

DSDT_REVISION = 2  # 64-bit AML integers
XSDT_REVISION = 1
FACS_LEN, FACS_VERSION = 64, 2
RSDP_LEN, RSDP_REVISION = 36, 2
HYPERVISOR_VENDOR = b"QUMRAN\x00\x00"


class AcpiBlob:
    """The tables, ready to copy into guest memory at ``base``.

    ``tables`` maps each signature (``"RSDP"``, ``"XSDT"``, ``"FACP"``, ``"APIC"``,
    ``"DSDT"``, ``"FACS"``) to its absolute guest-physical address.
    """

    __slots__ = ("base", "data", "rsdp_addr", "tables")

    def __init__(self, data: bytes, base: int, rsdp_addr: int, tables: dict[str, int]) -> None:
        self.data = data
        self.base = base
        self.rsdp_addr = rsdp_addr
        self.tables = tables


def build_acpi_tables(base: int, num_cpus: int) -> AcpiBlob:
    """Build every table for ``num_cpus`` CPUs (APIC ids 0..n-1) as a blob placed at ``base``."""
    if base % 16 or not 0 < base < 1 << 32:
        raise ValueError(f"ACPI base {base:#x} must be a 16-byte aligned address below 4 GiB")
    if not 1 <= num_cpus <= MAX_CPUS:
        raise ValueError(f"ACPI tables support 1..{MAX_CPUS} CPUs, not {num_cpus}")
    dsdt = build_dsdt()
    madt = build_madt(num_cpus)
    layout = _Layout(base)
    rsdp_at = layout.place("RSDP", RSDP_LEN)
    xsdt_at = layout.place("XSDT", 36 + 8 * 2)
    fadt_at = layout.place("FACP", FADT_LEN)
    madt_at = layout.place("APIC", len(madt))
    dsdt_at = layout.place("DSDT", len(dsdt))
    facs_at = layout.place("FACS", FACS_LEN, align=64)  # FACS must be 64-byte aligned (5.2.10)
    parts = {
        rsdp_at: build_rsdp(xsdt_at),
        xsdt_at: build_xsdt([fadt_at, madt_at]),
        fadt_at: build_fadt(dsdt_at, facs_at),
        madt_at: madt,
        dsdt_at: dsdt,
        facs_at: build_facs(),
    }
    data = bytearray(layout.end - base)
    for at, blob in parts.items():
        data[at - base : at - base + len(blob)] = blob
    if len(data) > MAX_BLOB:
        raise ValueError(f"ACPI tables take {len(data)} bytes, more than {MAX_BLOB}")
    return AcpiBlob(bytes(data), base, rsdp_at, dict(layout.addresses))


class _Layout:
    def __init__(self, base: int) -> None:
        self.end = base
        self.addresses: dict[str, int] = {}

    def place(self, name: str, length: int, align: int = 16) -> int:
        at = -(-self.end // align) * align
        self.addresses[name] = at
        self.end = at + length
        return at


def build_rsdp(xsdt_addr: int) -> bytes:
    """RSDP revision 2 (5.2.5.3): no RSDT, the XSDT address, and both checksums."""
    raw = bytearray(
        struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, RSDP_REVISION, 0,
                    RSDP_LEN, xsdt_addr, 0)
    )  # fmt: skip
    raw[8] = checksum(bytes(raw[:20]))  # the ACPI 1.0 part
    raw[32] = checksum(bytes(raw))  # the extended checksum covers all 36 bytes
    return bytes(raw)


def build_xsdt(addresses: list[int]) -> bytes:
    """XSDT (5.2.8): 64-bit pointers to every table but the DSDT and FACS."""
    return table(b"XSDT", XSDT_REVISION, b"".join(struct.pack("<Q", a) for a in addresses))


def build_fadt(dsdt_addr: int, facs_addr: int) -> bytes:
    """FADT revision 6.4, full (not hardware-reduced) ACPI with PM1a blocks, see constants."""
    body = bytearray(FADT_LEN)

    def put(offset: int, fmt: str, *values: int | bytes) -> None:
        struct.pack_into("<" + fmt, body, offset, *values)

    put(FADT_FIRMWARE_CTRL, "I", facs_addr)  # 32-bit form; X_FIRMWARE_CTRL must then be 0
    put(FADT_DSDT, "I", dsdt_addr)
    put(FADT_SCI_INT, "H", SCI_IRQ)
    put(FADT_SMI_CMD, "I", 0)  # no SMI: the platform is in ACPI mode from power-on
    put(FADT_PM1A_EVT_BLK, "I", PM1A_EVT)
    put(FADT_PM1A_CNT_BLK, "I", PM1A_CNT)
    put(FADT_PM1_EVT_LEN, "BB", PM1_EVT_LEN, PM1_CNT_LEN)
    put(FADT_P_LVL2_LAT, "HH", 101, 1001)  # > 100 / > 1000 us: no C2, no C3
    put(FADT_CENTURY, "B", RTC_CENTURY_INDEX)
    put(FADT_IAPC_BOOT_ARCH, "H", IAPC_LEGACY_DEVICES | IAPC_VGA_NOT_PRESENT)
    put(FADT_FLAGS, "I", FADT_FLAGS_VALUE)
    body[FADT_RESET_REG : FADT_RESET_REG + 12] = gas_io(RESET_PORT, 1, ACCESS_BYTE)
    put(FADT_RESET_VALUE, "B", RESET_VALUE)
    put(FADT_MINOR_VERSION, "B", FADT_MINOR)
    put(FADT_X_DSDT, "Q", dsdt_addr)
    body[FADT_X_PM1A_EVT_BLK : FADT_X_PM1A_EVT_BLK + 12] = gas_io(PM1A_EVT, PM1_EVT_LEN)
    body[FADT_X_PM1A_CNT_BLK : FADT_X_PM1A_CNT_BLK + 12] = gas_io(PM1A_CNT, PM1_CNT_LEN)
    put(FADT_HYPERVISOR_ID, "8s", HYPERVISOR_VENDOR)
    return table(b"FACP", FADT_REVISION, bytes(body[36:]))


def build_madt(num_cpus: int) -> bytes:
    """MADT (5.2.12): one enabled local APIC per CPU, the IOAPIC and the ISA overrides."""
    entries = [
        struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, cpu, cpu, LAPIC_ENABLED)  # 5.2.12.2
        for cpu in range(num_cpus)
    ]
    entries.append(struct.pack("<BBBBII", MADT_IOAPIC, 12, num_cpus, 0, IOAPIC_ADDR, 0))
    # 5.2.12.5: the PIT's IRQ 0 is wired to IOAPIC pin 2; the SCI is level, active high.
    entries.append(struct.pack("<BBBBIH", MADT_OVERRIDE, 10, 0, 0, 2, INTI_CONFORMS))
    entries.append(
        struct.pack("<BBBBIH", MADT_OVERRIDE, 10, 0, SCI_IRQ, SCI_IRQ, INTI_ACTIVE_HIGH_LEVEL)
    )
    # 5.2.12.7: LINT1 of every processor (UID 0xFF = all) is the NMI input.
    entries.append(struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, 0xFF, INTI_CONFORMS, 1))
    head = struct.pack("<II", LOCAL_APIC_ADDR, MADT_PCAT_COMPAT)
    return table(b"APIC", MADT_REVISION, head + b"".join(entries))


def build_dsdt() -> bytes:
    """DSDT (5.2.11.1): the \\_S5 sleep package, the PCI root bridge, COM1, and the PM block's
    ports reserved."""
    com1 = aml.device(
        "COM1",
        aml.name("_HID", aml.integer(aml.eisa_id("PNP0501"))),  # 16550A-compatible COM port
        aml.name("_UID", aml.integer(1)),
        aml.name("_CRS", aml.resource_template(aml.io_port(0x3F8, 8), aml.irq(COM1_IRQ))),
    )
    pm = aml.device(
        "PMIO",
        aml.name("_HID", aml.integer(aml.eisa_id("PNP0C02"))),  # motherboard resources
        aml.name("_UID", aml.integer(2)),
        aml.name("_CRS", aml.resource_template(aml.io_port(PM_BASE, PM_LEN))),
    )
    # \_S5 (7.4.2 "\_Sx (System States)"): SLP_TYP for PM1a_CNT, for PM1b_CNT, reserved x2.
    s5 = aml.name(
        "_S5",  # the DSDT's top level is the root scope
        aml.package(
            aml.integer(SLP_TYP_S5), aml.integer(SLP_TYP_S5), aml.integer(0), aml.integer(0)
        ),
    )
    return table(b"DSDT", DSDT_REVISION, s5 + aml.scope("_SB", pci.root_bridge(), com1, pm))


def build_facs() -> bytes:
    """FACS (5.2.10): required without HW_REDUCED_ACPI; no checksum; all state zero."""
    return struct.pack("<4sIIIIIQB3xI24x", b"FACS", FACS_LEN, 0, 0, 0, 0, 0, FACS_VERSION, 0)
