"""Guest-physical memory layout of a Qumran VM.

Low memory holds the boot structures the 64-bit boot protocol asks for
(Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"); the kernel is loaded at 1 MiB
and relocates itself; the initrd goes at the top of RAM below 4 GiB. The 3-4 GiB hole
holds the IOAPIC, the local APICs and KVM's private TSS pages.
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
PAGE_SIZE = 4096

GDT_ADDR = 0x500
IDT_ADDR = 0x520
ZERO_PAGE_ADDR = 0x7000  # struct boot_params
BOOT_STACK_TOP = 0x8FF0
PML4_ADDR = 0x9000  # then PDPT at 0xA000 and four page directories at 0xB000-0xEFFF
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000 - 1  # room below the EBDA; the kernel's own limit may be lower

EBDA_START = 0x9FC00  # the classic top of conventional memory
ACPI_BASE = 0xE0000  # the kernel scans 0xE0000-0xFFFFF for the RSDP
ACPI_SIZE = 0x20000
HIGH_MEMORY = 0x100000  # protected-mode kernel is loaded here

MMIO_GAP_START = 0xC000_0000  # RAM stops here and resumes at 4 GiB
MMIO_GAP_END = 0x1_0000_0000
IOAPIC_ADDR = 0xFEC0_0000
LAPIC_ADDR = 0xFEE0_0000
# KVM needs three pages for the real-mode TSS and one for the EPT identity map, inside
# guest-physical space but outside RAM (api.rst, KVM_SET_TSS_ADDR).
IDENTITY_MAP_ADDR = 0xFFFB_C000
TSS_ADDR = 0xFFFB_D000

# e820 entry types (boot.rst / include/uapi/asm/e820 ... E820_TYPE_*)
E820_RAM = 1
E820_RESERVED = 2


def ram_ranges(mem_size: int) -> list[tuple[int, int]]:
    """(guest address, size) of each RAM range: below the MMIO gap, then above 4 GiB."""
    low = min(mem_size, MMIO_GAP_START)
    ranges = [(0, low)]
    if mem_size > low:
        ranges.append((MMIO_GAP_END, mem_size - low))
    return ranges


def e820_map(mem_size: int) -> list[tuple[int, int, int]]:
    """(address, size, type) entries describing RAM and the reserved BIOS area."""
    entries = [(0, EBDA_START, E820_RAM), (EBDA_START, 0xA0000 - EBDA_START, E820_RESERVED)]
    entries.append((ACPI_BASE, HIGH_MEMORY - ACPI_BASE, E820_RESERVED))
    for start, size in ram_ranges(mem_size):
        if start == 0:
            entries.append((HIGH_MEMORY, size - HIGH_MEMORY, E820_RAM))
        else:
            entries.append((start, size, E820_RAM))
    return entries
