"""qemu-img as the judge of disk images: what a file is, and copies that keep it sparse.

Plain ``qemu-img info`` reads the image's own header only: it reports a qcow2's backing
file name without opening it (``--backing-chain`` would), so inspecting a hostile file does
not make us read a path it names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qumran.images.errors import ImageRefused, ToolFailed
from qumran.images.run import run

FORMATS = ("qcow2", "raw")
SECTOR = 512
# Byte 510 of a whole disk: the MBR signature (a GPT disk keeps one in its protective MBR).
BOOT_SIGNATURE = b"\x55\xaa"
_PERCENT = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")


@dataclass(frozen=True)
class DiskInfo:
    format: str
    virtual_size: int
    backing: str | None
    data_file: str | None


def info(path: Path) -> DiskInfo:
    """What ``qemu-img info --output=json`` says about ``path`` (its format probed)."""
    try:
        out = run(["qemu-img", "info", "--output=json", "-U", "--", str(path)], f"reading {path}")
    except ToolFailed as exc:
        raise ImageRefused(f"{path} is not a disk image qemu-img can read: {exc.message}") from None
    try:
        doc = json.loads(out)
        specific = doc.get("format-specific", {}).get("data", {})
        return DiskInfo(
            format=str(doc["format"]),
            virtual_size=int(doc["virtual-size"]),
            backing=doc.get("backing-filename") or doc.get("full-backing-filename"),
            data_file=specific.get("data-file") if isinstance(specific, dict) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageRefused(f"qemu-img info gave no usable answer for {path}: {exc}") from exc


def check_importable(path: Path) -> DiskInfo:
    """Refuse what is not a self-contained qcow2 or a raw whole-disk image.

    A qcow2 with a backing file or an external data file could point anywhere on the host:
    refused. qemu-img calls any other file "raw" (a text file too), so a raw image must
    also look like a whole disk: whole sectors, and the boot signature of an MBR (or of a
    GPT disk's protective MBR) at byte 510.
    """
    if not path.exists():
        raise ImageRefused(f"{path} does not exist")
    if not path.is_file():
        raise ImageRefused(f"{path} is not a regular file")
    disk = info(path)
    if disk.format not in FORMATS:
        raise ImageRefused(
            f"{path} is a {disk.format} image: qumran takes qcow2 or raw; convert it first "
            f"with `qemu-img convert -O qcow2 {path} NEW.qcow2`"
        )
    if disk.backing:
        raise ImageRefused(
            f"{path} is a qcow2 with a backing file ({disk.backing}): import a standalone "
            f"copy (`qemu-img convert -O qcow2 {path} NEW.qcow2`)"
        )
    if disk.data_file:
        raise ImageRefused(
            f"{path} keeps its data in another file ({disk.data_file}): "
            "import a standalone copy made with `qemu-img convert`"
        )
    if disk.format == "raw":
        _check_raw_disk(path, disk.virtual_size)
    return disk


def _check_raw_disk(path: Path, size: int) -> None:
    if size == 0 or size % SECTOR:
        raise ImageRefused(
            f"{path} is neither a qcow2 image nor a raw disk image ({size} bytes is not a "
            "whole number of 512-byte sectors)"
        )
    with path.open("rb") as f:
        sector = f.read(SECTOR)
    if sector[510:512] != BOOT_SIGNATURE:
        raise ImageRefused(
            f"{path} is neither a qcow2 image nor a raw disk image (no partition table: "
            "its first sector lacks the 55 AA boot signature)"
        )


def convert(
    source: Path,
    target: Path,
    *,
    source_format: str,
    target_format: str,
    compress: bool = False,
    on_fraction: Callable[[float], None] | None = None,
) -> None:
    """``qemu-img convert`` with explicit formats (never probed), reporting its progress."""
    argv = ["qemu-img", "convert", "-p", "-f", source_format, "-O", target_format]
    if compress:
        argv.append("-c")
    argv += ["--", str(source), str(target)]

    def line(text: str) -> None:
        match = _PERCENT.search(text)
        if match and on_fraction is not None:
            on_fraction(float(match.group(1)) / 100)

    run(argv, f"writing {target.name}", on_line=line, split="\r")
