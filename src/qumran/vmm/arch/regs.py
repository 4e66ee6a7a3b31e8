"""Initial register state of the boot vCPU for the 64-bit entry point.

Long mode with paging (CR0.PE|PG, CR4.PAE, EFER.LME|LMA), the boot GDT's selectors,
interrupts off, %rsi = zero page (boot.rst, "64-bit Boot Protocol"). Application
processors keep KVM's reset state: the guest wakes them with INIT/SIPI.
"""

from __future__ import annotations

from qumran.kvm.structs import kvm_fpu, kvm_regs, kvm_sregs
from qumran.vmm.arch import gdt, layout

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
RFLAGS_RESERVED = 1 << 1  # bit 1 always reads as 1

FCW_DEFAULT = 0x37F  # x87 control word after FNINIT
MXCSR_DEFAULT = 0x1F80  # all SSE exceptions masked


def boot_regs(entry: int) -> kvm_regs:
    return kvm_regs(
        rip=entry,
        rsp=layout.BOOT_STACK_TOP,
        rbp=layout.BOOT_STACK_TOP,
        rsi=layout.ZERO_PAGE_ADDR,
        rflags=RFLAGS_RESERVED,
    )


def boot_sregs(sregs: kvm_sregs, pml4_addr: int) -> kvm_sregs:
    """Update ``sregs`` (as read from KVM, to keep its APIC base) for the 64-bit entry."""
    code = gdt.segment(gdt.BOOT_CS)
    data = gdt.segment(gdt.BOOT_DS)
    sregs.cs = code
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = gdt.segment(gdt.BOOT_TSS)
    sregs.gdt.base = layout.GDT_ADDR
    sregs.gdt.limit = len(gdt.BOOT_GDT) * 8 - 1
    sregs.idt.base = layout.IDT_ADDR
    sregs.idt.limit = 7
    sregs.cr3 = pml4_addr
    sregs.cr4 |= CR4_PAE
    sregs.cr0 = (sregs.cr0 & ~(CR0_CD | CR0_NW)) | CR0_PE | CR0_PG | CR0_ET
    sregs.efer |= EFER_LME | EFER_LMA
    return sregs


def boot_fpu() -> kvm_fpu:
    return kvm_fpu(fcw=FCW_DEFAULT, mxcsr=MXCSR_DEFAULT)
