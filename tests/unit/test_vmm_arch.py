"""Page tables, GDT, registers, CPUID and MSRs for the 64-bit entry."""

from __future__ import annotations

import struct

from qumran.kvm.structs import kvm_cpuid_entry2, kvm_lapic_state, kvm_sregs
from qumran.vmm.arch import cpuid, gdt, lapic, layout, msrs, paging, regs


def test_page_tables_identity_map_4gib_with_2mib_pages() -> None:
    base, tables = paging.build_page_tables()
    assert base == layout.PML4_ADDR and len(tables) == 6 * 4096

    def entry(table: int, index: int) -> int:
        return int(struct.unpack_from("<Q", tables, table * 4096 + 8 * index)[0])

    assert entry(0, 0) == paging.PDPT_ADDR | 3
    for gib in range(4):
        assert entry(1, gib) == (paging.PD_ADDR + gib * 4096) | 3
    assert entry(1, 4) == 0
    # walk a few addresses: PD index 511 of the last directory maps 4 GiB - 2 MiB
    assert entry(2, 0) == 0x83
    assert entry(5, 511) == (4 * layout.GiB - 2 * layout.MiB) | 0x83
    # the tables themselves sit in low RAM below the command line
    assert base + len(tables) <= layout.CMDLINE_ADDR


def test_gdt_descriptors_encode_flat_segments() -> None:
    raw = gdt.gdt_bytes()
    assert struct.unpack_from("<Q", raw, 0x10)[0] == 0x00AF9B000000FFFF  # 64-bit code
    assert struct.unpack_from("<Q", raw, 0x18)[0] == 0x00CF93000000FFFF  # data
    cs = gdt.segment(gdt.BOOT_CS)
    assert (cs.selector, cs.l, cs.db, cs.g, cs.limit, cs.type, cs.present) == (
        0x10, 1, 0, 1, 0xFFFFFFFF, 0xB, 1
    )  # fmt: skip
    ds = gdt.segment(gdt.BOOT_DS)
    assert (ds.l, ds.db, ds.type, ds.s) == (0, 1, 3, 1)
    assert gdt.segment(0).unusable == 1


def test_boot_registers_follow_the_64bit_protocol() -> None:
    r = regs.boot_regs(0x100200)
    assert (r.rip, r.rsi, r.rflags) == (0x100200, layout.ZERO_PAGE_ADDR, 2)
    s = kvm_sregs(cr0=0x60000010, apic_base=0xFEE00900)
    s = regs.boot_sregs(s, layout.PML4_ADDR)
    assert s.cr0 & 0x80000001 == 0x80000001 and not s.cr0 & (3 << 29)  # PG|PE, caches on
    assert s.cr4 & regs.CR4_PAE and s.efer & 0x500 == 0x500
    assert s.cr3 == layout.PML4_ADDR and s.apic_base == 0xFEE00900
    assert (s.cs.selector, s.ds.selector, s.ss.selector) == (0x10, 0x18, 0x18)
    assert s.gdt.limit == 5 * 8 - 1


def _leaf(function: int, index: int = 0, **regs_: int) -> kvm_cpuid_entry2:
    return kvm_cpuid_entry2(function=function, index=index, **regs_)


def test_cpuid_gives_each_vcpu_its_apic_id_and_the_topology() -> None:
    supported = [_leaf(1, ebx=0xFF000000), _leaf(0xB, 0), _leaf(0xB, 1), _leaf(0xB, 2),
                 _leaf(0x8000_0008, ecx=0xFFFF), _leaf(0x8000_0001)]  # fmt: skip
    for vcpu in range(3):
        table = {(e.function, e.index): e for e in cpuid.vcpu_cpuid(supported, vcpu, 3, True)}
        leaf1 = table[(1, 0)]
        assert leaf1.ebx >> 24 == vcpu and (leaf1.ebx >> 16) & 0xFF == 3
        assert leaf1.ecx & cpuid.ECX_HYPERVISOR and leaf1.ecx & cpuid.ECX_TSC_DEADLINE
        assert leaf1.edx & cpuid.EDX_HTT
        assert table[(0xB, 0)].edx == vcpu and table[(0xB, 1)].ebx == 3
        assert table[(0xB, 1)].eax == 2  # two APIC-id bits number three cores
        assert table[(0xB, 2)].ecx == 2 and table[(0xB, 2)].ebx == 0  # invalid level
        assert table[(0x8000_0008, 0)].ecx & 0xFF == 2
    assert supported[0].ebx == 0xFF000000  # the input is not modified


def test_single_vcpu_cpuid_has_no_htt() -> None:
    (leaf1,) = cpuid.vcpu_cpuid([_leaf(1)], 0, 1, False)
    assert not leaf1.edx & cpuid.EDX_HTT and not leaf1.ecx & cpuid.ECX_TSC_DEADLINE


def test_lapic_lint_wiring_keeps_other_bits() -> None:
    raw = bytearray(1024)
    struct.pack_into("<I", raw, lapic.APIC_LVT_LINT0, 0x0001_0000)  # masked, fixed
    struct.pack_into("<I", raw, 0x20, 0x0100_0000)  # APIC id register, untouched
    state = kvm_lapic_state.from_buffer_copy(raw)
    out = bytes(lapic.set_lint(state).regs)
    assert struct.unpack_from("<I", out, lapic.APIC_LVT_LINT0)[0] == 0x0001_0700
    assert struct.unpack_from("<I", out, lapic.APIC_LVT_LINT1)[0] == 0x0000_0400
    assert struct.unpack_from("<I", out, 0x20)[0] == 0x0100_0000


def test_boot_msrs_enable_write_back_mtrrs() -> None:
    table = msrs.boot_msrs()
    assert table[msrs.MSR_MTRR_DEF_TYPE] == (1 << 11) | 6
    assert table[msrs.MSR_IA32_MISC_ENABLE] & 1
