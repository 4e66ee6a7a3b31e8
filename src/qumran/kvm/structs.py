"""The /dev/kvm ABI as ctypes structures, one per kernel structure.

Sources: ``include/uapi/linux/kvm.h`` and ``arch/x86/include/uapi/asm/kvm.h`` (x86-64).
Every size is asserted at import against the value the kernel headers give (checked with a
C compiler by ``tests/unit/test_kvm_structs.py`` when one is installed), so a layout
mistake fails loudly instead of corrupting an ioctl argument.
"""

from __future__ import annotations

import ctypes
from ctypes import c_char, c_int32, c_int64, c_uint8, c_uint16, c_uint32, c_uint64

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the VMM's run time (resident memory)
    from typing import Any


class kvm_regs(ctypes.Structure):
    """asm/kvm.h: general-purpose registers (KVM_GET_REGS / KVM_SET_REGS)."""

    _fields_ = [
        (name, c_uint64)
        for name in (
            [
                "rax",
                "rbx",
                "rcx",
                "rdx",
                "rsi",
                "rdi",
                "rsp",
                "rbp",
                "r8",
                "r9",
                "r10",
                "r11",
                "r12",
                "r13",
                "r14",
                "r15",
                "rip",
                "rflags",
            ]
        )
    ]


class kvm_segment(ctypes.Structure):
    """asm/kvm.h: a segment register with its hidden descriptor cache."""

    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class kvm_dtable(ctypes.Structure):
    """asm/kvm.h: a descriptor-table register (GDTR / IDTR)."""

    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(ctypes.Structure):
    """asm/kvm.h: segment, control and descriptor-table registers."""

    _fields_ = [
        *[(name, kvm_segment) for name in ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"]],
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        *[(name, c_uint64) for name in ["cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"]],
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(ctypes.Structure):
    """asm/kvm.h: x87/SSE state in FXSAVE layout."""

    _fields_ = [
        ("fpr", (c_uint8 * 16) * 8),
        ("fcw", c_uint16),
        ("fsw", c_uint16),
        ("ftwx", c_uint8),
        ("pad1", c_uint8),
        ("last_opcode", c_uint16),
        ("last_ip", c_uint64),
        ("last_dp", c_uint64),
        ("xmm", (c_uint8 * 16) * 16),
        ("mxcsr", c_uint32),
        ("pad2", c_uint32),
    ]


class kvm_cpuid_entry2(ctypes.Structure):
    """asm/kvm.h: one CPUID leaf/subleaf."""

    _fields_ = [
        *[(name, c_uint32) for name in ["function", "index", "flags", "eax", "ebx", "ecx", "edx"]],
        ("padding", c_uint32 * 3),
    ]


class kvm_cpuid2(ctypes.Structure):
    """asm/kvm.h: header of a CPUID table; the entries follow (flexible array)."""

    _fields_ = [("nent", c_uint32), ("padding", c_uint32)]


class kvm_msr_entry(ctypes.Structure):
    """asm/kvm.h: one model-specific register."""

    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class kvm_msrs(ctypes.Structure):
    """asm/kvm.h: header of an MSR list; the entries follow (flexible array)."""

    _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32)]


class kvm_msr_list(ctypes.Structure):
    """asm/kvm.h: header of an MSR index list; u32 indices follow."""

    _fields_ = [("nmsrs", c_uint32)]


KVM_APIC_REG_SIZE = 0x400


class kvm_lapic_state(ctypes.Structure):
    """asm/kvm.h: the local APIC register page."""

    _fields_ = [("regs", c_uint8 * KVM_APIC_REG_SIZE)]  # char[] in the header


class kvm_irqchip(ctypes.Structure):
    """linux/kvm.h: PIC or IOAPIC state; the union is kept opaque (512 bytes)."""

    _fields_ = [("chip_id", c_uint32), ("pad", c_uint32), ("chip", c_uint8 * 512)]


class kvm_pit_config(ctypes.Structure):
    """linux/kvm.h: KVM_CREATE_PIT2 argument."""

    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


class kvm_pit_channel_state(ctypes.Structure):
    """asm/kvm.h: one i8254 channel."""

    _fields_ = [
        ("count", c_uint32),
        ("latched_count", c_uint16),
        *[
            (name, c_uint8)
            for name in [
                "count_latched",
                "status_latched",
                "status",
                "read_state",
                "write_state",
                "write_latch",
                "rw_mode",
                "mode",
                "bcd",
                "gate",
            ]
        ],
        ("count_load_time", c_int64),
    ]


class kvm_pit_state2(ctypes.Structure):
    """asm/kvm.h: KVM_GET_PIT2 / KVM_SET_PIT2."""

    _fields_ = [
        ("channels", kvm_pit_channel_state * 3),
        ("flags", c_uint32),
        ("reserved", c_uint32 * 9),
    ]


class kvm_userspace_memory_region(ctypes.Structure):
    """linux/kvm.h: a guest-physical range backed by process memory."""

    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


class kvm_irqfd(ctypes.Structure):
    """linux/kvm.h: bind an eventfd to a GSI."""

    _fields_ = [
        ("fd", c_uint32),
        ("gsi", c_uint32),
        ("flags", c_uint32),
        ("resamplefd", c_uint32),
        ("pad", c_uint8 * 16),
    ]


class kvm_ioeventfd(ctypes.Structure):
    """linux/kvm.h: signal an eventfd on a guest write to an address."""

    _fields_ = [
        ("datamatch", c_uint64),
        ("addr", c_uint64),
        ("len", c_uint32),
        ("fd", c_int32),
        ("flags", c_uint32),
        ("pad", c_uint8 * 36),
    ]


class kvm_coalesced_mmio_zone(ctypes.Structure):
    """linux/kvm.h: guest writes to [addr, addr+size) that KVM queues in the coalesced ring
    instead of exiting (port I/O when ``pio`` is 1, KVM_CAP_COALESCED_PIO)."""

    _fields_ = [("addr", c_uint64), ("size", c_uint32), ("pio", c_uint32)]


class kvm_coalesced_mmio(ctypes.Structure):
    """linux/kvm.h: one queued write in the ring."""

    _fields_ = [
        ("phys_addr", c_uint64),
        ("len", c_uint32),
        ("pio", c_uint32),
        ("data", c_uint8 * 8),
    ]


class kvm_irq_routing_irqchip(ctypes.Structure):
    """linux/kvm.h: a GSI routed to a pin of the PIC or IOAPIC."""

    _fields_ = [("irqchip", c_uint32), ("pin", c_uint32)]


class kvm_irq_routing_msi(ctypes.Structure):
    """linux/kvm.h: a GSI that sends an MSI (``devid`` only with KVM_MSI_VALID_DEVID)."""

    _fields_ = [
        ("address_lo", c_uint32),
        ("address_hi", c_uint32),
        ("data", c_uint32),
        ("devid", c_uint32),
    ]


class kvm_irq_routing_u(ctypes.Union):
    """The union of struct kvm_irq_routing_entry, padded by the kernel to 8 u32."""

    _fields_ = [
        ("irqchip", kvm_irq_routing_irqchip),
        ("msi", kvm_irq_routing_msi),
        ("pad", c_uint32 * 8),
    ]


class kvm_irq_routing_entry(ctypes.Structure):
    """linux/kvm.h: one GSI route (KVM_SET_GSI_ROUTING)."""

    _fields_ = [
        ("gsi", c_uint32),
        ("type", c_uint32),
        ("flags", c_uint32),
        ("pad", c_uint32),
        ("u", kvm_irq_routing_u),
    ]


class kvm_irq_routing(ctypes.Structure):
    """linux/kvm.h: header of a routing table; the entries follow (flexible array)."""

    _fields_ = [("nr", c_uint32), ("flags", c_uint32)]


class kvm_msi(ctypes.Structure):
    """linux/kvm.h: KVM_SIGNAL_MSI argument."""

    _fields_ = [
        ("address_lo", c_uint32),
        ("address_hi", c_uint32),
        ("data", c_uint32),
        ("flags", c_uint32),
        ("devid", c_uint32),
        ("pad", c_uint8 * 12),
    ]


class kvm_irq_level(ctypes.Structure):
    """linux/kvm.h: KVM_IRQ_LINE argument (``irq`` shares its slot with ``status``)."""

    _fields_ = [("irq", c_uint32), ("level", c_uint32)]


class kvm_mp_state(ctypes.Structure):
    """linux/kvm.h: a vCPU's multiprocessing state."""

    _fields_ = [("mp_state", c_uint32)]


class kvm_clock_data(ctypes.Structure):
    """linux/kvm.h: KVM_GET_CLOCK / KVM_SET_CLOCK."""

    _fields_ = [
        ("clock", c_uint64),
        ("flags", c_uint32),
        ("pad0", c_uint32),
        ("realtime", c_uint64),
        ("host_tsc", c_uint64),
        ("pad", c_uint32 * 4),
    ]


class kvm_vcpu_events(ctypes.Structure):
    """asm/kvm.h: pending exceptions, interrupts, NMI, SIPI vector and SMM state. Kept as
    bytes but for ``flags``, which says which parts KVM_SET_VCPU_EVENTS takes."""

    _fields_ = [("head", c_uint8 * 20), ("flags", c_uint32), ("tail", c_uint8 * 40)]


class kvm_debugregs(ctypes.Structure):
    """asm/kvm.h: DR0-3, DR6, DR7."""

    _fields_ = [("db", c_uint64 * 4), ("dr6", c_uint64), ("dr7", c_uint64),
                ("flags", c_uint64), ("reserved", c_uint64 * 9)]  # fmt: skip


class kvm_xsave(ctypes.Structure):
    """asm/kvm.h: the XSAVE area (its legacy 4 KiB; larger only with AMX permission, which
    qumran-vmm never asks for)."""

    _fields_ = [("region", c_uint32 * 1024)]


class kvm_xcr(ctypes.Structure):
    _fields_ = [("xcr", c_uint32), ("reserved", c_uint32), ("value", c_uint64)]


class kvm_xcrs(ctypes.Structure):
    """asm/kvm.h: extended control registers (XCR0)."""

    _fields_ = [("nr_xcrs", c_uint32), ("flags", c_uint32), ("xcrs", kvm_xcr * 16),
                ("padding", c_uint64 * 16)]  # fmt: skip


# --- struct kvm_run: the page shared with the kernel, mapped from the vCPU fd -------------


class kvm_run_io(ctypes.Structure):
    """KVM_EXIT_IO: the data is at ``data_offset`` from the start of kvm_run."""

    _fields_ = [
        ("direction", c_uint8),
        ("size", c_uint8),
        ("port", c_uint16),
        ("count", c_uint32),
        ("data_offset", c_uint64),
    ]


class kvm_run_mmio(ctypes.Structure):
    """KVM_EXIT_MMIO."""

    _fields_ = [
        ("phys_addr", c_uint64),
        ("data", c_uint8 * 8),
        ("len", c_uint32),
        ("is_write", c_uint8),
    ]


class kvm_run_fail_entry(ctypes.Structure):
    """KVM_EXIT_FAIL_ENTRY."""

    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class kvm_run_internal(ctypes.Structure):
    """KVM_EXIT_INTERNAL_ERROR."""

    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class kvm_run_system_event(ctypes.Structure):
    """KVM_EXIT_SYSTEM_EVENT (``flags`` overlays ``data[0]``)."""

    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class kvm_run_exit(ctypes.Union):
    """The exit-information union of kvm_run, padded to 256 bytes by the kernel."""

    _fields_ = [
        ("hardware_exit_reason", c_uint64),
        ("fail_entry", kvm_run_fail_entry),
        ("io", kvm_run_io),
        ("mmio", kvm_run_mmio),
        ("internal", kvm_run_internal),
        ("system_event", kvm_run_system_event),
        ("padding", c_char * 256),
    ]


SYNC_REGS_SIZE_BYTES = 2048


class kvm_run(ctypes.Structure):
    """linux/kvm.h: the shared run page (only its first part; the mapping is larger)."""

    _anonymous_ = ("exit",)
    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("exit", kvm_run_exit),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", c_char * SYNC_REGS_SIZE_BYTES),
    ]


# --- flexible-array helpers ----------------------------------------------------------------


def cpuid2_type(nent: int) -> type[ctypes.Structure]:
    """``struct kvm_cpuid2`` followed by ``nent`` entries, as one ctypes type."""
    fields: list[tuple[str, Any]] = [
        ("nent", c_uint32),
        ("padding", c_uint32),
        ("entries", kvm_cpuid_entry2 * nent),
    ]
    return type(f"kvm_cpuid2_{nent}", (ctypes.Structure,), {"_fields_": fields})


def msrs_type(nmsrs: int) -> type[ctypes.Structure]:
    """``struct kvm_msrs`` followed by ``nmsrs`` entries, as one ctypes type."""
    fields: list[tuple[str, Any]] = [
        ("nmsrs", c_uint32),
        ("pad", c_uint32),
        ("entries", kvm_msr_entry * nmsrs),
    ]
    return type(f"kvm_msrs_{nmsrs}", (ctypes.Structure,), {"_fields_": fields})


def msr_list_type(nmsrs: int) -> type[ctypes.Structure]:
    """``struct kvm_msr_list`` followed by ``nmsrs`` u32 indices."""
    fields: list[tuple[str, Any]] = [("nmsrs", c_uint32), ("indices", c_uint32 * nmsrs)]
    return type(f"kvm_msr_list_{nmsrs}", (ctypes.Structure,), {"_fields_": fields})


def irq_routing_type(nr: int) -> type[ctypes.Structure]:
    """``struct kvm_irq_routing`` followed by ``nr`` entries, as one ctypes type."""
    fields: list[tuple[str, Any]] = [
        ("nr", c_uint32),
        ("flags", c_uint32),
        ("entries", kvm_irq_routing_entry * nr),
    ]
    return type(f"kvm_irq_routing_{nr}", (ctypes.Structure,), {"_fields_": fields})


# Sizes from the kernel headers (x86-64); a mismatch is a bug in this module.
KERNEL_SIZES: dict[type[ctypes.Structure], int] = {
    kvm_regs: 144,
    kvm_segment: 24,
    kvm_dtable: 16,
    kvm_sregs: 312,
    kvm_fpu: 416,
    kvm_cpuid_entry2: 40,
    kvm_cpuid2: 8,
    kvm_msr_entry: 16,
    kvm_msrs: 8,
    kvm_msr_list: 4,
    kvm_lapic_state: 1024,
    kvm_irqchip: 520,
    kvm_pit_config: 64,
    kvm_pit_state2: 112,
    kvm_userspace_memory_region: 32,
    kvm_irqfd: 32,
    kvm_ioeventfd: 64,
    kvm_coalesced_mmio_zone: 16,
    kvm_coalesced_mmio: 24,
    kvm_irq_routing_entry: 48,
    kvm_irq_routing: 8,
    kvm_msi: 32,
    kvm_irq_level: 8,
    kvm_mp_state: 4,
    kvm_clock_data: 48,
    kvm_vcpu_events: 64,
    kvm_debugregs: 128,
    kvm_xsave: 4096,
    kvm_xcr: 16,
    kvm_xcrs: 392,
    kvm_run: 2352,
}


def _check_sizes() -> None:
    for struct, size in KERNEL_SIZES.items():
        if ctypes.sizeof(struct) != size:
            raise ImportError(f"{struct.__name__} is {ctypes.sizeof(struct)} bytes, kernel: {size}")
    if (kvm_run.exit.offset, kvm_run.s.offset) != (32, 304):
        raise ImportError("struct kvm_run exit union or sync-regs area misplaced")


_check_sizes()
