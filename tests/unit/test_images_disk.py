"""The whole-disk layout: partition table (real sfdisk), ext4 at an offset (real mke2fs,
checked by e2fsck and debugfs), and GRUB's boot sector and core image as grub-setup would
write them (real grub-mkimage and boot.img)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from qumran.images import bootloader, disk, tools
from qumran.images.errors import ImageError

MIB = disk.MIB
needs_sfdisk = pytest.mark.skipif(tools.find("sfdisk") is None, reason="needs sfdisk (fdisk)")
needs_mke2fs = pytest.mark.skipif(tools.find("debugfs") is None, reason="needs e2fsprogs")
needs_grub = pytest.mark.skipif(
    tools.find("grub-mkimage") is None or not (tools.GRUB_PC_DIR / "boot.img").is_file(),
    reason="needs grub-pc-bin",
)


def test_one_partition_from_1_mib_to_the_end() -> None:
    part = disk.layout(2048 * MIB)
    assert (part.start_lba, part.offset) == (2048, MIB)
    assert part.sectors == 2048 * MIB // 512 - 2048
    assert part.offset + part.size == part.disk_bytes
    assert part.gap_sectors == 2047


@pytest.mark.parametrize(
    ("size", "words"),
    [(MIB * 100 + 512, "whole number of MiB"), (32 * MIB, "minimum"), (3 << 40, "2 TiB")],
)
def test_impossible_disks_are_refused(size: int, words: str) -> None:
    with pytest.raises(ImageError, match=words):
        disk.layout(size)


def test_the_sfdisk_script_names_a_bootable_linux_partition() -> None:
    script = disk.sfdisk_script(disk.layout(64 * MIB), 0x1234ABCD)
    assert script.splitlines() == [
        "label: dos",
        "label-id: 0x1234abcd",
        "unit: sectors",
        f"start=2048, size={64 * MIB // 512 - 2048}, type=83, bootable",
    ]


@needs_sfdisk
def test_sfdisk_writes_the_table_we_asked_for(tmp_path: Path) -> None:
    part = disk.layout(64 * MIB)
    raw = tmp_path / "disk.raw"
    disk.make_disk(raw, part, 0xCAFE0001)
    assert raw.stat().st_size == 64 * MIB
    assert raw.stat().st_blocks * 512 < MIB  # sparse: nothing but the table was written
    disk_id, entries = disk.parse_mbr(raw.read_bytes()[:512])
    assert disk_id == 0xCAFE0001
    assert entries == [disk.MbrEntry(True, 0x83, 2048, part.sectors)]


def test_parse_mbr_wants_the_signature() -> None:
    with pytest.raises(ImageError, match="55 AA"):
        disk.parse_mbr(bytes(512))


@needs_sfdisk
@needs_mke2fs
def test_mke2fs_fills_the_partition_from_a_directory_without_mounting(tmp_path: Path) -> None:
    part = disk.layout(64 * MIB)
    raw = tmp_path / "disk.raw"
    disk.make_disk(raw, part, 1)
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("qumran\n")
    (tree / "vmlinuz").symlink_to("boot/vmlinuz-1")
    argv = disk.mke2fs_argv(raw, part, tree, "2f43eed3-4f8b-4113-bf46-add960904a49", "root")
    subprocess.run([tools.program("mke2fs"), *argv[1:]], check=True, capture_output=True)
    # The partition table is intact, and the file system lies exactly in the partition.
    assert disk.parse_mbr(raw.read_bytes()[:512])[1][0].start_lba == 2048
    fs = tmp_path / "fs.img"
    with raw.open("rb") as src, fs.open("wb") as dst:
        src.seek(part.offset)
        shutil.copyfileobj(src, dst)
    fsck = subprocess.run([tools.program("e2fsck"), "-fn", str(fs)], capture_output=True)
    assert fsck.returncode == 0, fsck.stdout
    cat = subprocess.run([tools.program("debugfs"), "-R", "cat /etc/hostname", str(fs)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert cat.stdout == "qumran\n"
    info = subprocess.run([tools.program("dumpe2fs"), "-h", str(fs)],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "2f43eed3-4f8b-4113-bf46-add960904a49" in info
    assert f"Block count:              {part.size // 4096}" in info


def _boot_img() -> bytes:
    return (tools.GRUB_PC_DIR / "boot.img").read_bytes()


@needs_grub
def test_the_boot_sector_keeps_the_partition_table_and_points_at_core() -> None:
    mbr = bytearray(512)
    mbr[440:444] = b"\x01\x02\x03\x04"
    mbr[446:462] = bytes([0x80, 0, 0, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 2048, 4096)
    mbr[510:512] = b"\x55\xaa"
    boot = _boot_img()
    sector = bootloader.boot_sector(boot, bytes(mbr), core_lba=1)
    assert sector[0x1B8:0x200] == mbr[0x1B8:0x200]  # disk id, table, signature: the disk's
    assert struct.unpack_from("<Q", sector, 0x5C)[0] == 1
    assert sector[0x64] == 0xFF
    assert sector[0x66:0x68] == b"\x90\x90"  # boot.img has a short jmp (EB xx) there
    assert boot[0x66] == 0xEB
    # Everything else is boot.img's own code.
    changed = [i for i in range(0x1B8) if sector[i] != boot[i]]
    assert set(changed) <= set(range(0x5C, 0x64)) | {0x64, 0x66, 0x67}


def test_the_boot_sector_needs_an_mbr() -> None:
    boot = bytes(510) + b"\x55\xaa"
    with pytest.raises(ImageError, match="no MBR"):
        bootloader.boot_sector(boot, bytes(512))
    with pytest.raises(ImageError, match=r"boot\.img"):
        bootloader.boot_sector(bytes(512), boot)


@needs_grub
def test_grub_mkimage_makes_a_core_whose_block_list_we_fill(tmp_path: Path) -> None:
    core = bootloader.make_core(tmp_path)
    sectors = (len(core) + 511) // 512 - 1
    _start, length, segment = struct.unpack_from("<QHH", core, 512 - 12)
    assert (length, segment) == (sectors, 0x820)
    patched = bootloader.core_with_blocklist(core, core_lba=1)
    assert struct.unpack_from("<QHH", patched, 512 - 12) == (2, sectors, 0x820)
    assert patched[512:] == core[512:]


def test_a_core_that_is_not_grubs_is_refused() -> None:
    fake = bytearray(2048)
    struct.pack_into("<QHH", fake, 500, 2, 3, 0x1234)
    with pytest.raises(ImageError, match="segment"):
        bootloader.core_with_blocklist(bytes(fake))
    struct.pack_into("<QHH", fake, 500, 2, 9, 0x820)
    with pytest.raises(ImageError, match="9 sectors"):
        bootloader.core_with_blocklist(bytes(fake))


@needs_grub
@needs_sfdisk
def test_install_writes_the_boot_sector_and_core_before_the_partition(tmp_path: Path) -> None:
    part = disk.layout(64 * MIB)
    raw = tmp_path / "disk.raw"
    disk.make_disk(raw, part, 0xABCD)
    loader = bootloader.load(tmp_path)
    bootloader.install(raw, part, loader)
    data = raw.read_bytes()
    assert disk.parse_mbr(data[:512]) == (0xABCD, [disk.MbrEntry(True, 0x83, 2048, part.sectors)])
    assert data[:0x5C] == loader.boot_img[:0x5C]
    core = bootloader.core_with_blocklist(loader.core_img)
    assert data[512 : 512 + len(core)] == core
    assert not any(data[512 + len(core) : part.offset])  # nothing spills into the gap's rest


@needs_grub
@needs_sfdisk
def test_a_core_too_big_for_the_gap_is_refused(tmp_path: Path) -> None:
    part = disk.Layout(64 * MIB, 64, 64 * MIB // 512 - 64)  # a 63-sector gap
    raw = tmp_path / "disk.raw"
    disk.make_disk(raw, part, 1)
    before = raw.read_bytes()[:32768]
    with pytest.raises(ImageError, match="gap before the partition has 63"):
        bootloader.install(raw, part, bootloader.load(tmp_path))
    assert raw.read_bytes()[:32768] == before
