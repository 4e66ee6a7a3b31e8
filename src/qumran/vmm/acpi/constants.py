"""The platform's fixed layout, shared by the devices and the ACPI tables that describe them.

One place for every number the guest learns from the tables: the tables and the devices
must agree on them or power-off, reset and interrupts silently stop working.
"""

from __future__ import annotations

# ACPI PM1a fixed-hardware register blocks (ACPI 6.4 section 4.8.4 "Fixed Hardware Registers"),
# in I/O space.
PM_BASE = 0x600
PM1A_EVT = PM_BASE  # PM1_STS (2 bytes) + PM1_EN (2 bytes)
PM1_EVT_LEN = 4
PM1A_CNT = PM_BASE + 4  # PM1_CNT (2 bytes)
PM1_CNT_LEN = 2
RESET_PORT = PM_BASE + 8  # FADT RESET_REG (ACPI 6.4 section 4.8.4.6 "Reset Register"), one byte
RESET_VALUE = 0x06
PM_LEN = 9  # 0x600..0x608: the whole block as one bus range

# SLP_TYP value the DSDT's \_S5 package hands to the OS, and that PM1_CNT treats as "off".
SLP_TYP_S5 = 5

# Interrupts (ISA IRQ = GSI for these; the MADT routes them through the IOAPIC).
SCI_IRQ = 9
COM1_IRQ = 4

# CMOS index of the century byte (FADT CENTURY field).
RTC_CENTURY_INDEX = 0x32

# Interrupt controllers (MADT).
LOCAL_APIC_ADDR = 0xFEE0_0000
IOAPIC_ADDR = 0xFEC0_0000

# PCI (see qumran.vmm.devices.pci and the root bridge in acpi/pci.py): the 32-bit memory
# window for BARs, below the IOAPIC; device BARs are assigned from its start.
PCI_MMIO_BASE = 0xC000_0000
PCI_MMIO_END = 0xFEBF_FFFF  # inclusive; the IOAPIC page follows
# INTx fallback: slot S, pin INTA -> IOAPIC pin 16 + S % 8 (level, as _PRT entries are).
PCI_INTX_GSI_BASE = 16
PCI_INTX_GSIS = 8
PCI_SLOTS = 32


def pci_intx_gsi(slot: int) -> int:
    return PCI_INTX_GSI_BASE + slot % PCI_INTX_GSIS
