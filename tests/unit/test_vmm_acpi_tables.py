"""The ACPI blob: every table well-formed, every pointer landing on the right table."""

from __future__ import annotations

import itertools
import struct

import pytest

from qumran.vmm.acpi import AcpiBlob, build_acpi_tables
from qumran.vmm.acpi import constants as platform
from qumran.vmm.acpi import tables as t

BASE = 0xE0000


def at(blob: AcpiBlob, addr: int, length: int) -> bytes:
    off = addr - blob.base
    assert off >= 0 and off + length <= len(blob.data), f"{addr:#x} is outside the blob"
    return blob.data[off : off + length]


def sdt(blob: AcpiBlob, addr: int) -> bytes:
    """The whole table at ``addr``, by the length its header claims."""
    (length,) = struct.unpack("<I", at(blob, addr + 4, 4))
    return at(blob, addr, length)


def u(fmt: str, data: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<" + fmt, data, offset)[0]
    return value


@pytest.fixture(scope="module")
def blob() -> AcpiBlob:
    return build_acpi_tables(BASE, 2)


def test_blob_fits_the_bios_area_and_rsdp_is_where_linux_scans(blob: AcpiBlob) -> None:
    assert blob.rsdp_addr == BASE
    assert blob.rsdp_addr % 16 == 0
    assert blob.rsdp_addr >= 0xE0000 and BASE + len(blob.data) <= 0x100000
    big = build_acpi_tables(BASE, t.MAX_CPUS)
    assert len(big.data) <= 0x20000


def test_rsdp_checksums_and_xsdt_pointer(blob: AcpiBlob) -> None:
    rsdp = at(blob, blob.rsdp_addr, 36)
    assert rsdp[:8] == b"RSD PTR "
    assert sum(rsdp[:20]) % 256 == 0
    assert sum(rsdp) % 256 == 0
    assert rsdp[15] == 2  # revision 2: XSDT
    assert u("I", rsdp, 20) == 36
    assert u("Q", rsdp, 24) == blob.tables["XSDT"]


@pytest.mark.parametrize("sig", ["XSDT", "FACP", "APIC", "DSDT"])
def test_table_header_length_and_checksum(blob: AcpiBlob, sig: str) -> None:
    table = sdt(blob, blob.tables[sig])
    assert table[:4] == sig.encode()
    assert len(table) >= 36
    assert sum(table) % 256 == 0
    assert table[10:16] == b"QUMRAN"


def test_xsdt_points_at_fadt_and_madt_inside_the_blob(blob: AcpiBlob) -> None:
    xsdt = sdt(blob, blob.tables["XSDT"])
    pointers = [u("Q", xsdt, off) for off in range(36, len(xsdt), 8)]
    assert [at(blob, p, 4) for p in pointers] == [b"FACP", b"APIC"]
    assert pointers == [blob.tables["FACP"], blob.tables["APIC"]]


def test_tables_do_not_overlap(blob: AcpiBlob) -> None:
    spans = sorted(
        (addr, addr + (36 if sig == "RSDP" else len(sdt(blob, addr))))
        for sig, addr in blob.tables.items()
    )
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start


def test_fadt_points_at_dsdt_facs_and_pm_blocks(blob: AcpiBlob) -> None:
    fadt = sdt(blob, blob.tables["FACP"])
    assert len(fadt) == t.FADT_LEN == 276
    assert fadt[8] == 6
    dsdt = blob.tables["DSDT"]
    assert u("I", fadt, t.FADT_DSDT) == dsdt
    assert u("Q", fadt, t.FADT_X_DSDT) == dsdt
    assert at(blob, dsdt, 4) == b"DSDT"
    facs = u("I", fadt, t.FADT_FIRMWARE_CTRL)
    assert at(blob, facs, 4) == b"FACS" and facs % 64 == 0
    assert u("H", fadt, t.FADT_SCI_INT) == 9
    assert u("I", fadt, t.FADT_SMI_CMD) == 0
    assert u("I", fadt, t.FADT_PM1A_EVT_BLK) == platform.PM1A_EVT
    assert u("I", fadt, t.FADT_PM1A_CNT_BLK) == platform.PM1A_CNT
    assert fadt[t.FADT_PM1_EVT_LEN : t.FADT_PM1_EVT_LEN + 2] == bytes((4, 2))
    # X_PM1a_EVT_BLK / X_PM1a_CNT_BLK: SystemIO Generic Addresses of the same ports
    assert struct.unpack_from("<BBBBQ", fadt, t.FADT_X_PM1A_EVT_BLK) == (1, 32, 0, 0, 0x600)
    assert struct.unpack_from("<BBBBQ", fadt, t.FADT_X_PM1A_CNT_BLK) == (1, 16, 0, 0, 0x604)
    assert fadt[t.FADT_CENTURY] == platform.RTC_CENTURY_INDEX


def test_fadt_flags_fixed_power_button_and_reset_register(blob: AcpiBlob) -> None:
    fadt = sdt(blob, blob.tables["FACP"])
    flags = u("I", fadt, t.FADT_FLAGS)
    assert not flags & t.F_PWR_BUTTON  # fixed-feature power button
    assert not flags & t.F_HW_REDUCED_ACPI
    assert flags & t.F_RESET_REG_SUP
    reset = struct.unpack_from("<BBBBQ", fadt, t.FADT_RESET_REG)
    assert reset == (1, 8, 0, 1, platform.RESET_PORT)
    assert fadt[t.FADT_RESET_VALUE] == platform.RESET_VALUE
    assert not u("H", fadt, t.FADT_IAPC_BOOT_ARCH) & 0x2  # no 8042: no PS/2 probe


def madt_entries(blob: AcpiBlob) -> list[bytes]:
    madt = sdt(blob, blob.tables["APIC"])
    entries, off = [], 44
    while off < len(madt):
        length = madt[off + 1]
        assert length >= 2
        entries.append(madt[off : off + length])
        off += length
    assert off == len(madt)
    return entries


@pytest.mark.parametrize("cpus", [1, 2, 3, 8, 64, t.MAX_CPUS])
def test_madt_has_one_enabled_local_apic_per_cpu(cpus: int) -> None:
    blob = build_acpi_tables(BASE, cpus)
    madt = sdt(blob, blob.tables["APIC"])
    assert sum(madt) % 256 == 0
    assert u("I", madt, 36) == 0xFEE00000
    lapics = [e for e in madt_entries(blob) if e[0] == 0]
    assert [(e[2], e[3]) for e in lapics] == [(i, i) for i in range(cpus)]
    assert all(u("I", e, 4) & 1 for e in lapics)
    (ioapic,) = [e for e in madt_entries(blob) if e[0] == 1]
    assert ioapic[2] == cpus
    assert (u("I", ioapic, 4), u("I", ioapic, 8)) == (0xFEC00000, 0)


def test_madt_overrides_pit_and_sci(blob: AcpiBlob) -> None:
    overrides = {e[3]: (u("I", e, 4), u("H", e, 8)) for e in madt_entries(blob) if e[0] == 2}
    assert overrides == {0: (2, 0), 9: (9, 0x0D)}  # SCI: active high, level


def test_dsdt_carries_the_s5_package(blob: AcpiBlob) -> None:
    dsdt = sdt(blob, blob.tables["DSDT"])
    s5 = bytes.fromhex("08 5F 53 35 5F 12 08 04 0A 05 0A 05 00 00")
    assert s5 in dsdt
    assert platform.SLP_TYP_S5 == 5


def test_facs(blob: AcpiBlob) -> None:
    facs = at(blob, blob.tables["FACS"], 64)
    assert facs[:4] == b"FACS"
    assert u("I", facs, 4) == 64
    assert facs[32] == 2  # version


@pytest.mark.parametrize(("base", "cpus"), [(BASE + 8, 1), (BASE, 0), (BASE, 255), (0, 1)])
def test_bad_arguments_are_refused(base: int, cpus: int) -> None:
    with pytest.raises(ValueError):
        build_acpi_tables(base, cpus)


def test_tables_are_relocatable() -> None:
    blob = build_acpi_tables(0x9_0000, 4)
    assert blob.rsdp_addr == 0x9_0000
    xsdt = sdt(blob, blob.tables["XSDT"])
    assert at(blob, u("Q", xsdt, 36), 4) == b"FACP"
