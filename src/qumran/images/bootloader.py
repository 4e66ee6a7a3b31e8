"""GRUB for BIOS (SeaBIOS) boot, installed into a disk image file by hand.

``grub-install`` wants a block device and a mounted /boot; what it writes is small and
documented, so we write it ourselves (GRUB manual, "BIOS installation" and "Images"):

- ``core.img``, made by ``grub-mkimage -O i386-pc``: ``diskboot.img`` (one sector) and the
  compressed GRUB kernel with the modules it needs to read the root file system and boot
  Linux, plus an early config. It goes in the gap after the MBR, from sector 1.
- ``boot.img``, the 446 bytes of MBR boot code, loads ``core.img``'s first sector.

The few bytes patched (GRUB's ``include/grub/i386/pc/boot.h`` names the offsets):

- boot.img 0x5C, ``kernel_sector``: 64-bit LBA of core.img's first sector;
- boot.img 0x64, ``boot_drive``: 0xFF, "use the drive the BIOS booted from" (DL);
- boot.img 0x66, ``boot_drive_check``: a 2-byte jump over the check that DL names a hard
  disk. On a hard disk grub-setup replaces it with two NOPs, so a BIOS that passes a bad DL
  still boots from the first hard disk; we do the same;
- boot.img 0x1B8..0x1FE stays the disk's: disk identifier and partition table (boot.img
  keeps floppy-only code there);
- diskboot.img's last 12 bytes, the block list: 64-bit LBA of the rest of core.img, its
  length in sectors (set by grub-mkimage) and the load segment 0x820 (for checking).

The early config sets ``root`` and ``prefix`` to the first partition; normal mode then reads
``/boot/grub/grub.cfg`` from the image's root file system (written by the image recipe).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from qumran.images.disk import SECTOR, Layout
from qumran.images.errors import ImageError
from qumran.images.run import run
from qumran.images.tools import GRUB_PC_DIR

KERNEL_SECTOR_OFFSET = 0x5C
BOOT_DRIVE_OFFSET = 0x64
DRIVE_CHECK_OFFSET = 0x66
USE_BIOS_DRIVE = 0xFF
NOP = 0x90
DISK_AREA = slice(0x1B8, 0x1FE)  # disk identifier, 2 reserved bytes, 4 partition entries
BLOCKLIST_OFFSET = SECTOR - 12  # start (u64), len (u16), segment (u16)
BLOCKLIST_SEGMENT = 0x820
CORE_LBA = 1
# Modules baked into core.img (grub-mkimage adds what they depend on). No module directory
# is copied into the image: what GRUB needs is here.
MODULES = (
    "biosdisk", "part_msdos", "ext2",  # read the root file system
    "normal", "configfile", "echo", "test",  # read grub.cfg
    "linux", "boot",  # boot Linux (16/32-bit boot protocol)
    "serial", "terminal",  # menu and messages on ttyS0 as well as on the screen
)  # fmt: skip
PARTITION = "(hd0,msdos1)"
EARLY_CONFIG = f"set root={PARTITION}\nset prefix=($root)/boot/grub\n"


@dataclass(frozen=True)
class BootLoader:
    boot_img: bytes
    core_img: bytes


def make_core(work: Path) -> bytes:
    """Run ``grub-mkimage`` for a BIOS core image with :data:`MODULES` and the early config."""
    config = work / "grub-early.cfg"
    config.write_text(EARLY_CONFIG)
    core = work / "core.img"
    run(
        ["grub-mkimage", "-O", "i386-pc", "-d", str(GRUB_PC_DIR), "-o", str(core),
         "-c", str(config), "-p", f"{PARTITION}/boot/grub", *MODULES],
        "making GRUB's core image",
    )  # fmt: skip
    return core.read_bytes()


def boot_sector(boot_img: bytes, mbr: bytes, core_lba: int = CORE_LBA) -> bytes:
    """boot.img made to load core.img from ``core_lba``, keeping ``mbr``'s partition table."""
    if len(boot_img) != SECTOR or boot_img[510:512] != b"\x55\xaa":
        raise ImageError("boot.img is not a 512-byte boot sector")
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        raise ImageError("the disk has no MBR to install the boot sector into")
    sector = bytearray(boot_img)
    sector[DISK_AREA] = mbr[DISK_AREA]
    struct.pack_into("<Q", sector, KERNEL_SECTOR_OFFSET, core_lba)
    sector[BOOT_DRIVE_OFFSET] = USE_BIOS_DRIVE
    sector[DRIVE_CHECK_OFFSET : DRIVE_CHECK_OFFSET + 2] = bytes([NOP, NOP])
    return bytes(sector)


def core_with_blocklist(core_img: bytes, core_lba: int = CORE_LBA) -> bytes:
    """core.img with its block list pointing at the sectors after its first, at ``core_lba``."""
    if len(core_img) <= SECTOR:
        raise ImageError("core.img is too small to be a GRUB core image")
    sectors = (len(core_img) + SECTOR - 1) // SECTOR - 1
    core = bytearray(core_img)
    _start, length, segment = struct.unpack_from("<QHH", core, BLOCKLIST_OFFSET)
    if segment != BLOCKLIST_SEGMENT:
        raise ImageError(f"core.img's block list has segment {segment:#x}, not diskboot's")
    if length != sectors:
        raise ImageError(f"core.img's block list says {length} sectors, the file has {sectors}")
    struct.pack_into("<QHH", core, BLOCKLIST_OFFSET, core_lba + 1, sectors, segment)
    return bytes(core)


def install(disk: Path, part: Layout, loader: BootLoader) -> None:
    """Write the boot sector and core image into the raw ``disk`` laid out as ``part``."""
    core = core_with_blocklist(loader.core_img)
    needed = (len(core) + SECTOR - 1) // SECTOR
    if needed > part.gap_sectors:
        raise ImageError(
            f"GRUB's core image needs {needed} sectors; the gap before the "
            f"partition has {part.gap_sectors}"
        )
    with disk.open("r+b") as f:
        mbr = f.read(SECTOR)
        f.seek(CORE_LBA * SECTOR)
        f.write(core)
        f.seek(0)
        f.write(boot_sector(loader.boot_img, mbr))


def load(work: Path) -> BootLoader:
    """boot.img from the host's GRUB, and a fresh core.img."""
    boot_path = GRUB_PC_DIR / "boot.img"
    try:
        boot_img = boot_path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {boot_path}: {exc.strerror} (package grub-pc-bin)") from exc
    return BootLoader(boot_img, make_core(work))


def grub_cfg(cmdline: str, title: str) -> str:
    """The image's ``/boot/grub/grub.cfg``: a short menu on the screen and on ttyS0.

    ``/vmlinuz`` and ``/initrd.img`` are the links Debian's kernel packages keep pointing at
    the newest kernel, so a kernel upgraded inside the guest boots with no GRUB update.
    """
    return (
        "serial --unit=0 --speed=115200\n"
        "terminal_input serial console\n"
        "terminal_output serial console\n"
        "set timeout=1\n"
        f"menuentry '{title}' {{\n"
        f"    linux /vmlinuz {cmdline}\n"
        "    initrd /initrd.img\n"
        "}\n"
        f"menuentry '{title} (previous kernel)' {{\n"
        f"    linux /vmlinuz.old {cmdline}\n"
        "    initrd /initrd.img.old\n"
        "}\n"
    )
