"""Per-vCPU CPUID, derived from KVM_GET_SUPPORTED_CPUID.

KVM reports what it can virtualise; the VMM must still fill in what only it knows: each
vCPU's APIC id and the topology (how many vCPUs share the package). Leaf layouts: Intel
SDM vol. 2A, CPUID; AMD APM vol. 3, appendix E.
"""

from __future__ import annotations

from collections.abc import Iterable

from qumran.kvm.structs import kvm_cpuid_entry2

LEAF_FEATURES = 0x1
LEAF_CACHE_PARAMS = 0x4
LEAF_TOPOLOGY = 0xB
LEAF_TOPOLOGY_V2 = 0x1F
LEAF_AMD_FEATURES = 0x8000_0001
LEAF_AMD_SIZES = 0x8000_0008
LEAF_AMD_TOPOLOGY = 0x8000_001E

ECX_TSC_DEADLINE = 1 << 24  # leaf 1: the LAPIC timer's TSC-deadline mode
ECX_HYPERVISOR = 1 << 31  # leaf 1: "running under a hypervisor"
EDX_HTT = 1 << 28  # leaf 1: EBX[23:16] is valid
AMD_ECX_CMP_LEGACY = 1 << 1

TOPO_LEVEL_SMT = 1
TOPO_LEVEL_CORE = 2


def _shift_for(count: int) -> int:
    """Bits of APIC id needed to number ``count`` units (ceil(log2))."""
    return max(0, (count - 1).bit_length())


def vcpu_cpuid(
    supported: Iterable[kvm_cpuid_entry2], vcpu_id: int, vcpu_count: int, tsc_deadline: bool
) -> list[kvm_cpuid_entry2]:
    """The CPUID table for vCPU ``vcpu_id`` of ``vcpu_count``: one package, one thread per
    core, APIC id = vCPU index."""
    table = [kvm_cpuid_entry2.from_buffer_copy(e) for e in supported]
    for e in table:
        _adjust(e, vcpu_id, vcpu_count, tsc_deadline)
    return table


def _adjust(e: kvm_cpuid_entry2, vcpu_id: int, count: int, tsc_deadline: bool) -> None:
    match e.function:
        case 0x1:
            # EBX: [31:24] initial APIC id, [23:16] logical processors, [15:8] CLFLUSH/8
            e.ebx = (vcpu_id << 24) | (count << 16) | (8 << 8) | (e.ebx & 0xFF)
            e.ecx |= ECX_HYPERVISOR
            if tsc_deadline:
                e.ecx |= ECX_TSC_DEADLINE
            if count > 1:
                e.edx |= EDX_HTT
        case 0x4:
            # EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1
            e.eax = (e.eax & 0x3FFF) | ((count - 1) << 26)
        case 0xB | 0x1F:
            _topology_leaf(e, vcpu_id, count)
        case 0x8000_0001:
            if count > 1:
                e.ecx |= AMD_ECX_CMP_LEGACY
        case 0x8000_0008:
            # ECX[15:12]: APIC id bits per package; [7:0]: cores per package - 1
            e.ecx = (e.ecx & ~0xF0FF) | (_shift_for(count) << 12) | (count - 1)
        case 0x8000_001E:
            # EAX: extended APIC id; EBX[7:0] compute unit (core) id, [15:8] threads - 1
            e.eax = vcpu_id
            e.ebx = vcpu_id & 0xFF
            e.ecx = 0  # node 0, one node per package
        case _:
            pass


def _topology_leaf(e: kvm_cpuid_entry2, vcpu_id: int, count: int) -> None:
    """Extended topology: subleaf 0 = SMT level (1 thread), 1 = core level, then invalid."""
    e.edx = vcpu_id  # x2APIC id of this logical processor
    match e.index:
        case 0:
            e.eax, e.ebx, e.ecx = 0, 1, (TOPO_LEVEL_SMT << 8) | 0
        case 1:
            e.eax, e.ebx, e.ecx = _shift_for(count), count, (TOPO_LEVEL_CORE << 8) | 1
        case _:
            e.eax, e.ebx, e.ecx = 0, 0, e.index & 0xFF
