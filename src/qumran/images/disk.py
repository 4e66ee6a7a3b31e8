"""A whole-disk image made without loop devices or mounts.

The disk is a sparse file with an MBR (DOS) partition table written by ``sfdisk`` and one
bootable Linux partition from 1 MiB to the end; ``mke2fs -d`` fills the ext4 file system
from a directory, written straight into the file at the partition's offset
(``-E offset=``). The first MiB before the partition is where GRUB's core image goes
(:mod:`qumran.images.bootloader`). The root partition is the last one, so ``growpart`` can
grow it to a larger disk on first boot.

MBR layout (the "classical generic MBR"): 446 bytes of boot code, four 16-byte partition
entries from byte 446, the signature 55 AA at byte 510; the 32-bit disk identifier
(Linux's ``PARTUUID=<id>-01``) is at byte 440.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from qumran.images.errors import ImageError
from qumran.images.run import run

SECTOR = 512
MIB = 1024 * 1024
# 1 MiB: the usual alignment, and room for GRUB's core image between the MBR and the file
# system (sectors 1 to 2047).
FIRST_LBA = 2048
MBR_ENTRIES_OFFSET = 446
MBR_ENTRY_SIZE = 16
MBR_DISK_ID_OFFSET = 440
MBR_SIGNATURE = b"\x55\xaa"
LINUX_PARTITION = 0x83
ACTIVE = 0x80
MIN_DISK = 64 * MIB
EXT4_BLOCK = 4096


@dataclass(frozen=True)
class Layout:
    """Where the root partition lies on a disk of ``disk_bytes``."""

    disk_bytes: int
    start_lba: int
    sectors: int

    @property
    def offset(self) -> int:
        return self.start_lba * SECTOR

    @property
    def size(self) -> int:
        return self.sectors * SECTOR

    @property
    def gap_sectors(self) -> int:
        """Sectors free for a boot loader between the MBR and the partition."""
        return self.start_lba - 1


@dataclass(frozen=True)
class MbrEntry:
    bootable: bool
    type: int
    start_lba: int
    sectors: int


def layout(disk_bytes: int) -> Layout:
    """One partition from :data:`FIRST_LBA` to the end of a disk of whole MiBs."""
    if disk_bytes % MIB:
        raise ImageError(f"disk size {disk_bytes} is not a whole number of MiB")
    if disk_bytes < MIN_DISK:
        raise ImageError(f"disk size {disk_bytes} is below the minimum of {MIN_DISK // MIB} MiB")
    if disk_bytes // SECTOR > 0xFFFFFFFF:
        raise ImageError("an MBR disk cannot address more than 2 TiB")
    return Layout(disk_bytes, FIRST_LBA, disk_bytes // SECTOR - FIRST_LBA)


def sfdisk_script(part: Layout, disk_id: int) -> str:
    """The ``sfdisk`` input for ``part``: a DOS label and one bootable Linux partition."""
    return (
        "label: dos\n"
        f"label-id: 0x{disk_id:08x}\n"
        "unit: sectors\n"
        f"start={part.start_lba}, size={part.sectors}, type={LINUX_PARTITION:x}, bootable\n"
    )


def parse_mbr(sector: bytes) -> tuple[int, list[MbrEntry]]:
    """The disk identifier and the used primary entries of an MBR (checked signature)."""
    if len(sector) < SECTOR or sector[510:512] != MBR_SIGNATURE:
        raise ImageError("no MBR: the first sector lacks the 55 AA signature")
    (disk_id,) = struct.unpack_from("<I", sector, MBR_DISK_ID_OFFSET)
    entries = []
    for i in range(4):
        raw = sector[MBR_ENTRIES_OFFSET + i * MBR_ENTRY_SIZE :][:MBR_ENTRY_SIZE]
        # status, CHS first (3), type, CHS last (3), LBA first, sector count
        status, ptype, start, count = struct.unpack("<B3xB3xII", raw)
        if ptype:
            entries.append(MbrEntry(status == ACTIVE, ptype, start, count))
    return disk_id, entries


def make_disk(path: Path, part: Layout, disk_id: int) -> None:
    """A sparse file of ``part.disk_bytes`` with the partition table on it."""
    with path.open("wb") as f:
        f.truncate(part.disk_bytes)
    run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
        "writing the partition table",
        stdin_text=sfdisk_script(part, disk_id),
    )
    with path.open("rb") as f:
        found_id, entries = parse_mbr(f.read(SECTOR))
    want = MbrEntry(True, LINUX_PARTITION, part.start_lba, part.sectors)
    if found_id != disk_id or entries != [want]:
        raise ImageError(f"sfdisk wrote an unexpected table on {path}: {entries}")


def mke2fs_argv(path: Path, part: Layout, root: Path, uuid: str, label: str) -> list[str]:
    """``mke2fs`` writing an ext4 file system of ``root``'s files into the partition."""
    if part.size % EXT4_BLOCK:
        raise ImageError("the partition is not a whole number of 4 KiB blocks")
    return [
        "mke2fs", "-q", "-F", "-t", "ext4", "-b", str(EXT4_BLOCK),
        "-L", label, "-U", uuid,
        # offset: the partition's place in the disk file; nodiscard: a file, not a device.
        "-E", f"offset={part.offset},nodiscard",
        "-d", str(root), str(path), str(part.size // 1024) + "k",
    ]  # fmt: skip
