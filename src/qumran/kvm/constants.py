"""KVM ioctl request numbers, exit reasons and capabilities (include/uapi/linux/kvm.h).

Request numbers are derived from the structures in :mod:`qumran.kvm.structs`; nothing here
is a pasted hex value except the numbering the kernel header itself assigns.
"""

from __future__ import annotations

import ctypes

from qumran.kvm import structs as s
from qumran.kvm.ioctl import io, ior, iow, iowr

KVMIO = 0xAE
KVM_API_VERSION = 12

# system ioctls (on the /dev/kvm fd)
KVM_GET_API_VERSION = io(KVMIO, 0x00)
KVM_CREATE_VM = io(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = iowr(KVMIO, 0x02, s.kvm_msr_list)
KVM_CHECK_EXTENSION = io(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = io(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = iowr(KVMIO, 0x05, s.kvm_cpuid2)

# VM ioctls
KVM_CREATE_VCPU = io(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = iow(KVMIO, 0x46, s.kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = io(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = iow(KVMIO, 0x48, ctypes.c_uint64)
KVM_REGISTER_COALESCED_MMIO = iow(KVMIO, 0x67, s.kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = iow(KVMIO, 0x68, s.kvm_coalesced_mmio_zone)
KVM_CREATE_IRQCHIP = io(KVMIO, 0x60)
KVM_IRQ_LINE = iow(KVMIO, 0x61, s.kvm_irq_level)
KVM_GET_IRQCHIP = iowr(KVMIO, 0x62, s.kvm_irqchip)
KVM_SET_IRQCHIP = ior(KVMIO, 0x63, s.kvm_irqchip)  # sic: the header declares it _IOR
KVM_SET_GSI_ROUTING = iow(KVMIO, 0x6A, s.kvm_irq_routing)
KVM_IRQFD = iow(KVMIO, 0x76, s.kvm_irqfd)
KVM_CREATE_PIT2 = iow(KVMIO, 0x77, s.kvm_pit_config)
KVM_IOEVENTFD = iow(KVMIO, 0x79, s.kvm_ioeventfd)
KVM_SET_CLOCK = iow(KVMIO, 0x7B, s.kvm_clock_data)
KVM_GET_CLOCK = ior(KVMIO, 0x7C, s.kvm_clock_data)
KVM_GET_PIT2 = ior(KVMIO, 0x9F, s.kvm_pit_state2)
KVM_SET_PIT2 = iow(KVMIO, 0xA0, s.kvm_pit_state2)
KVM_SIGNAL_MSI = iow(KVMIO, 0xA5, s.kvm_msi)

# vCPU ioctls
KVM_RUN = io(KVMIO, 0x80)
KVM_GET_REGS = ior(KVMIO, 0x81, s.kvm_regs)
KVM_SET_REGS = iow(KVMIO, 0x82, s.kvm_regs)
KVM_GET_SREGS = ior(KVMIO, 0x83, s.kvm_sregs)
KVM_SET_SREGS = iow(KVMIO, 0x84, s.kvm_sregs)
KVM_GET_MSRS = iowr(KVMIO, 0x88, s.kvm_msrs)
KVM_SET_MSRS = iow(KVMIO, 0x89, s.kvm_msrs)
KVM_GET_FPU = ior(KVMIO, 0x8C, s.kvm_fpu)
KVM_SET_FPU = iow(KVMIO, 0x8D, s.kvm_fpu)
KVM_GET_LAPIC = ior(KVMIO, 0x8E, s.kvm_lapic_state)
KVM_SET_LAPIC = iow(KVMIO, 0x8F, s.kvm_lapic_state)
KVM_SET_CPUID2 = iow(KVMIO, 0x90, s.kvm_cpuid2)
KVM_GET_MP_STATE = ior(KVMIO, 0x98, s.kvm_mp_state)
KVM_SET_MP_STATE = iow(KVMIO, 0x99, s.kvm_mp_state)
KVM_GET_VCPU_EVENTS = ior(KVMIO, 0x9F, s.kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = iow(KVMIO, 0xA0, s.kvm_vcpu_events)
KVM_GET_DEBUGREGS = ior(KVMIO, 0xA1, s.kvm_debugregs)
KVM_SET_DEBUGREGS = iow(KVMIO, 0xA2, s.kvm_debugregs)
KVM_GET_XSAVE = ior(KVMIO, 0xA4, s.kvm_xsave)
KVM_SET_XSAVE = iow(KVMIO, 0xA5, s.kvm_xsave)
KVM_GET_XCRS = ior(KVMIO, 0xA6, s.kvm_xcrs)
KVM_SET_XCRS = iow(KVMIO, 0xA7, s.kvm_xcrs)

# struct kvm_vcpu_events flags (asm/kvm.h KVM_VCPUEVENT_VALID_*)
KVM_VCPUEVENT_VALID_NMI_PENDING = 1 << 0
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 1 << 1

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_PIT_SPEAKER_DUMMY = 1
KVM_MEM_READONLY = 1 << 1

# struct kvm_irqfd flags
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
# struct kvm_ioeventfd flags (enum kvm_ioeventfd_flag_nr_*)
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2
# struct kvm_irq_routing_entry types and irqchip ids
KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2


class Constants:
    """A namespace of a kernel header's numbers. Plain ints, not an IntEnum: an enum class
    costs every VMM process ~45 KiB of resident memory, and these are only compared."""

    @classmethod
    def name_of(cls, value: int) -> str:
        """The constant's name, or the number itself when this table does not list it."""
        for name, known in vars(cls).items():
            if known == value and not name.startswith("_") and isinstance(known, int):
                return name
        return str(value)


class ExitReason(Constants):
    """``kvm_run.exit_reason`` values (the x86-relevant ones)."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24
    IOAPIC_EOI = 26
    X86_RDMSR = 29
    X86_WRMSR = 30
    X86_BUS_LOCK = 33
    NOTIFY = 37


class SystemEvent(Constants):
    """``kvm_run.system_event.type``."""

    SHUTDOWN = 1
    RESET = 2
    CRASH = 3
    WAKEUP = 4
    SUSPEND = 5


class InternalError(Constants):
    """``kvm_run.internal.suberror``."""

    EMULATION = 1
    SIMUL_EX = 2
    DELIVERY_EV = 3
    UNEXPECTED_EXIT_REASON = 4


class Cap(Constants):
    """Capabilities for KVM_CHECK_EXTENSION."""

    IRQCHIP = 0
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    EXT_CPUID = 7
    NR_VCPUS = 9
    COALESCED_MMIO = 15  # the ring's page offset in a vCPU's mapping, 0 if none
    IRQ_ROUTING = 25
    IRQFD = 32
    PIT2 = 33
    PIT_STATE2 = 35
    IOEVENTFD = 36
    MAX_VCPUS = 66
    TSC_DEADLINE_TIMER = 72
    SIGNAL_MSI = 77
    IMMEDIATE_EXIT = 136
    COALESCED_PIO = 162


class MpState(Constants):
    """``kvm_mp_state.mp_state``."""

    RUNNABLE = 0
    UNINITIALIZED = 1
    INIT_RECEIVED = 2
    HALTED = 3
    SIPI_RECEIVED = 4
