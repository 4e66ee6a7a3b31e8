"""Local APIC LVT set-up: LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, the
virtual-wire wiring a PC BIOS leaves (Intel MP spec 3.6.2.2; SDM vol. 3A 10.5.1)."""

from __future__ import annotations

import struct

from qumran.kvm.structs import kvm_lapic_state

APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
DELIVERY_MODE_SHIFT = 8
DELIVERY_MODE_MASK = 0x7 << DELIVERY_MODE_SHIFT
DM_NMI = 0x4
DM_EXTINT = 0x7


def set_lint(state: kvm_lapic_state) -> kvm_lapic_state:
    regs = bytearray(state.regs)
    for reg, mode in ((APIC_LVT_LINT0, DM_EXTINT), (APIC_LVT_LINT1, DM_NMI)):
        (value,) = struct.unpack_from("<I", regs, reg)
        value = (value & ~DELIVERY_MODE_MASK) | (mode << DELIVERY_MODE_SHIFT)
        struct.pack_into("<I", regs, reg, value)
    return kvm_lapic_state.from_buffer_copy(regs)
