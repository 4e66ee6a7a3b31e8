"""Identity-mapped page tables for the 64-bit entry.

The boot protocol needs the kernel, zero page and command line identity-mapped; we map
the whole first 4 GiB with 2 MiB pages (Intel SDM vol. 3A, 4.5 "4-level paging"), which
also covers the initrd wherever it lands below 4 GiB. The kernel replaces these tables
early in boot.
"""

from __future__ import annotations

import struct

from qumran.vmm.arch import layout

PRESENT = 1 << 0
WRITABLE = 1 << 1
PAGE_SIZE_2M = 1 << 7  # PS bit in a page-directory entry
ENTRIES = 512
MAPPED_GIB = 4

PDPT_ADDR = layout.PML4_ADDR + layout.PAGE_SIZE
PD_ADDR = PDPT_ADDR + layout.PAGE_SIZE


def build_page_tables() -> tuple[int, bytes]:
    """(address, bytes) of PML4 + PDPT + four page directories, to copy into guest RAM."""
    pml4 = bytearray(layout.PAGE_SIZE)
    struct.pack_into("<Q", pml4, 0, PDPT_ADDR | PRESENT | WRITABLE)
    pdpt = bytearray(layout.PAGE_SIZE)
    for gib in range(MAPPED_GIB):
        pd_addr = PD_ADDR + gib * layout.PAGE_SIZE
        struct.pack_into("<Q", pdpt, 8 * gib, pd_addr | PRESENT | WRITABLE)
    pds = bytearray(layout.PAGE_SIZE * MAPPED_GIB)
    for i in range(ENTRIES * MAPPED_GIB):
        struct.pack_into("<Q", pds, 8 * i, (i << 21) | PRESENT | WRITABLE | PAGE_SIZE_2M)
    return layout.PML4_ADDR, bytes(pml4 + pdpt + pds)
