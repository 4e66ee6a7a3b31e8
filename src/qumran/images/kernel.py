"""Kernel images: the bzImage container and the ELF ``vmlinux`` inside it.

A bzImage is a real-mode setup part followed by a compressed ELF ``vmlinux``
(``Documentation/arch/x86/boot.rst``: ``setup_sects`` at 0x1f1, ``payload_offset`` and
``payload_length`` at 0x248/0x24c since protocol 2.08, counted from the start of the
protected-mode code). Debian's generic kernel compresses it with xz, and unpacking xz under
TCG emulation costs seconds at every boot; QEMU boots the extracted ELF directly through
its PVH entry (``CONFIG_PVH``), skipping that work.
"""

from __future__ import annotations

import lzma
import struct

from qumran.images.errors import ImageError

_HDRS_MAGIC = b"HdrS"  # boot.rst: "header" field at 0x202


def vmlinux_from_bzimage(bzimage: bytes) -> bytes:
    """The ELF kernel inside ``bzimage`` (xz payloads only: the cloud kernel's LZ4 is cheap
    enough to leave to the boot)."""
    if bzimage[0x202:0x206] != _HDRS_MAGIC:
        raise ImageError("not a bzImage: no HdrS signature at 0x202")
    version = struct.unpack_from("<H", bzimage, 0x206)[0]
    if version < 0x208:
        raise ImageError(f"boot protocol {version:#x} predates payload_offset (2.08)")
    setup_sects = bzimage[0x1F1] or 4  # boot.rst: 0 means 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    if not payload.startswith(b"\xfd7zXZ\x00"):
        raise ImageError("bzImage payload is not xz-compressed")
    # The kernel's build appends the uncompressed size after the xz stream: ignore it.
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    if not elf.startswith(b"\x7fELF"):
        raise ImageError("bzImage payload is not an ELF vmlinux")
    return elf
