"""The boot GDT and the segment registers loaded from it.

The 64-bit boot protocol wants flat __BOOT_CS (selector 0x10, execute/read) and __BOOT_DS
(0x18, read/write) descriptors (boot.rst, "64-bit Boot Protocol"). Descriptor format:
Intel SDM vol. 3A, 3.4.5 "Segment Descriptors".
"""

from __future__ import annotations

import struct

from qumran.kvm.structs import kvm_segment

# access byte | flags nibble << 12, as in the descriptor's bits 40-55
CODE64 = 0xA09B  # present, ring 0, code execute/read accessed; G=1, L=1
DATA = 0xC093  # present, ring 0, data read/write accessed; G=1, D/B=1
TSS64 = 0x808B  # present, 64-bit busy TSS; G=1

BOOT_CS = 0x10
BOOT_DS = 0x18
BOOT_TSS = 0x20


class Descriptor:
    __slots__ = ("base", "flags", "limit")

    def __init__(self, flags: int, base: int, limit: int) -> None:
        self.flags = flags
        self.base = base
        self.limit = limit

    def encode(self) -> int:
        """The 8-byte descriptor as an integer."""
        b, lim, f = self.base, self.limit, self.flags
        return (
            ((b & 0xFF00_0000) << 32)
            | ((f & 0xF0FF) << 40)
            | ((lim & 0xF_0000) << 32)
            | ((b & 0x00FF_FFFF) << 16)
            | (lim & 0xFFFF)
        )

    def segment(self, selector: int) -> kvm_segment:
        """The hidden-cache view KVM wants for a register loaded with ``selector``."""
        f = self.flags
        granular = (f >> 15) & 1
        limit = (self.limit << 12) | 0xFFF if granular else self.limit
        return kvm_segment(
            base=self.base,
            limit=limit,
            selector=selector,
            type=f & 0xF,
            present=(f >> 7) & 1,
            dpl=(f >> 5) & 3,
            db=(f >> 14) & 1,
            s=(f >> 4) & 1,
            l=(f >> 13) & 1,
            g=granular,
            avl=(f >> 12) & 1,
            unusable=0 if (f >> 7) & 1 else 1,
        )


BOOT_GDT: tuple[Descriptor, ...] = (
    Descriptor(0, 0, 0),  # null
    Descriptor(0, 0, 0),  # unused
    Descriptor(CODE64, 0, 0xFFFFF),  # 0x10 __BOOT_CS
    Descriptor(DATA, 0, 0xFFFFF),  # 0x18 __BOOT_DS
    Descriptor(TSS64, 0, 0xFFFFF),  # 0x20 (KVM wants a usable TR)
)


def gdt_bytes(gdt: tuple[Descriptor, ...] = BOOT_GDT) -> bytes:
    return b"".join(struct.pack("<Q", d.encode()) for d in gdt)


def segment(selector: int, gdt: tuple[Descriptor, ...] = BOOT_GDT) -> kvm_segment:
    return gdt[selector >> 3].segment(selector)
