"""The Linux x86 boot protocol: reading a bzImage's setup header, writing the zero page.

Offsets are those of ``struct boot_params`` and ``struct setup_header``
(Documentation/arch/x86/boot.rst, "The Real-Mode Kernel Header", and
Documentation/arch/x86/zero-page.rst).
"""

from __future__ import annotations

import struct

from qumran.vmm.arch import layout
from qumran.vmm.errors import BadKernel, GuestTooLarge

BOOT_FLAG = 0xAA55  # at 0x1FE
HDRS_MAGIC = b"HdrS"  # at 0x202
MIN_PROTOCOL = 0x020C  # 2.12: xloadflags, so we can tell a 64-bit entry exists
XLF_KERNEL_64 = 1 << 0
LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80

# struct boot_params offsets (zero-page.rst)
BP_ACPI_RSDP_ADDR = 0x070
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_E820_ENTRIES = 0x1E8
BP_HDR = 0x1F1
BP_E820_TABLE = 0x2D0
E820_MAX_ENTRIES = 128
ZERO_PAGE_SIZE = 4096

# struct setup_header fields, at their offsets in the image and the zero page
HDR_SETUP_SECTS = 0x1F1
HDR_VID_MODE = 0x1FA
HDR_BOOT_FLAG = 0x1FE
HDR_JUMP_LEN = 0x201  # the header runs to 0x202 + this byte
HDR_MAGIC = 0x202
HDR_VERSION = 0x206
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_RAMDISK_IMAGE = 0x218
HDR_RAMDISK_SIZE = 0x21C
HDR_HEAP_END_PTR = 0x224
HDR_CMD_LINE_PTR = 0x228
HDR_INITRD_ADDR_MAX = 0x22C
HDR_KERNEL_ALIGNMENT = 0x230
HDR_XLOADFLAGS = 0x236
HDR_CMDLINE_SIZE = 0x238
HDR_PREF_ADDRESS = 0x258
HDR_INIT_SIZE = 0x260

LOADER_UNDEFINED = 0xFF  # type_of_loader for a boot loader without an assigned id
VID_MODE_NORMAL = 0xFFFF
HEAP_END = 0xFE00  # heap_end_ptr: end of setup heap, relative to the real-mode code
# Enough of the file to hold the whole setup header: it ends at 0x202 + a byte (< 0x302).
HEAD_SIZE = 1024


class Bzimage:
    """What the VMM needs from a bzImage: its setup header and where its 64-bit payload is.

    The payload (the protected-mode kernel, loaded at HIGH_MEMORY) stays in the file: the
    VMM reads it straight into guest memory on every boot instead of keeping a copy.
    """

    __slots__ = (
        "cmdline_size",
        "header",
        "init_size",
        "initrd_addr_max",
        "payload_offset",
        "payload_size",
        "pref_address",
        "version",
    )  # fmt: skip

    def __init__(self, header: bytes, payload_offset: int, payload_size: int, version: int,
                 init_size: int, pref_address: int, initrd_addr_max: int,
                 cmdline_size: int) -> None:  # fmt: skip
        self.header = header  # setup header bytes, 0x1F1 up to its end
        self.payload_offset = payload_offset  # in the file
        self.payload_size = payload_size
        self.version = version
        self.init_size = init_size  # what the kernel needs from its load address to unpack
        self.pref_address = pref_address
        self.initrd_addr_max = initrd_addr_max
        self.cmdline_size = cmdline_size

    @property
    def entry_64(self) -> int:
        """64-bit entry point: load address + 0x200 (boot.rst, "64-bit Boot Protocol")."""
        return layout.HIGH_MEMORY + 0x200


def parse_bzimage(image: bytes, name: str = "kernel", size: int | None = None) -> Bzimage:
    """Check a bzImage from its first bytes (``image``, at least :data:`HEAD_SIZE` of them
    unless the file is shorter) and its ``size`` (default: ``len(image)``); raise
    :class:`BadKernel` with the reason if it is not one."""
    size = len(image) if size is None else size
    if size < HEAD_SIZE or len(image) < HEAD_SIZE:  # boot sector + the setup header
        raise BadKernel(f"{name}: not a bzImage (only {size} bytes)")
    (boot_flag,) = struct.unpack_from("<H", image, HDR_BOOT_FLAG)
    if boot_flag != BOOT_FLAG or image[HDR_MAGIC : HDR_MAGIC + 4] != HDRS_MAGIC:
        raise BadKernel(f"{name}: not a bzImage (no Linux setup header)")
    (version,) = struct.unpack_from("<H", image, HDR_VERSION)
    if version < MIN_PROTOCOL:
        raise BadKernel(
            f"{name}: boot protocol {version >> 8}.{version & 0xFF} is too old (need 2.12)"
        )
    (xloadflags,) = struct.unpack_from("<H", image, HDR_XLOADFLAGS)
    if not xloadflags & XLF_KERNEL_64:
        raise BadKernel(f"{name}: this bzImage has no 64-bit entry point")
    setup_sects = image[HDR_SETUP_SECTS] or 4  # 0 means 4 (boot.rst)
    payload_start = (setup_sects + 1) * 512
    if payload_start >= size:
        raise BadKernel(f"{name}: truncated bzImage")
    header_end = HDR_MAGIC + image[HDR_JUMP_LEN]
    return Bzimage(
        header=image[HDR_SETUP_SECTS:header_end],
        payload_offset=payload_start,
        payload_size=size - payload_start,
        version=version,
        init_size=struct.unpack_from("<I", image, HDR_INIT_SIZE)[0],
        pref_address=struct.unpack_from("<Q", image, HDR_PREF_ADDRESS)[0],
        initrd_addr_max=struct.unpack_from("<I", image, HDR_INITRD_ADDR_MAX)[0],
        cmdline_size=struct.unpack_from("<I", image, HDR_CMDLINE_SIZE)[0],
    )


def kernel_end(kernel: Bzimage) -> int:
    """The highest address the kernel touches while decompressing and relocating itself.

    The 64-bit entry moves the kernel to ``pref_address`` (16 MiB for Debian's) when it
    was loaded lower, and needs ``init_size`` bytes from there.
    """
    base = max(layout.HIGH_MEMORY, kernel.pref_address)
    return base + max(kernel.init_size, kernel.payload_size)


def place_initrd(kernel: Bzimage, mem_size: int, initrd_size: int) -> int:
    """Address for the initrd: page-aligned, as high as allowed, clear of the kernel."""
    low_ram_end = layout.ram_ranges(mem_size)[0][1]
    need_mib = -(-(kernel_end(kernel) + initrd_size) // layout.MiB) + 1
    ceiling = min(low_ram_end, kernel.initrd_addr_max + 1)
    addr = (ceiling - initrd_size) & ~(layout.PAGE_SIZE - 1)
    if addr < kernel_end(kernel):
        raise GuestTooLarge(
            f"memory too small: the kernel needs {kernel_end(kernel) // layout.MiB} MiB "
            f"and the initrd {initrd_size / layout.MiB:.1f} MiB; give at least {need_mib} MiB"
        )
    return addr


def check_memory(kernel: Bzimage, mem_size: int) -> None:
    """Refuse a memory size in which the kernel cannot even decompress."""
    low_ram_end = layout.ram_ranges(mem_size)[0][1]
    if low_ram_end < kernel_end(kernel):
        need_mib = -(-kernel_end(kernel) // layout.MiB) + 1
        raise GuestTooLarge(
            f"memory too small: {mem_size // layout.MiB} MiB, the kernel needs at least "
            f"{need_mib} MiB"
        )


def build_zero_page(
    kernel: Bzimage,
    mem_size: int,
    cmdline_addr: int,
    initrd: tuple[int, int] | None,
    rsdp_addr: int | None,
) -> bytes:
    """``struct boot_params`` for the 64-bit entry, with the setup header copied in."""
    zp = bytearray(ZERO_PAGE_SIZE)
    zp[BP_HDR : BP_HDR + len(kernel.header)] = kernel.header
    struct.pack_into("<H", zp, HDR_VID_MODE, VID_MODE_NORMAL)
    zp[HDR_TYPE_OF_LOADER] = LOADER_UNDEFINED
    zp[HDR_LOADFLAGS] |= LOADED_HIGH | CAN_USE_HEAP
    struct.pack_into("<H", zp, HDR_HEAP_END_PTR, HEAP_END)
    struct.pack_into("<I", zp, HDR_CMD_LINE_PTR, cmdline_addr & 0xFFFFFFFF)
    struct.pack_into("<I", zp, BP_EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    if initrd is not None:
        addr, size = initrd
        struct.pack_into("<II", zp, HDR_RAMDISK_IMAGE, addr & 0xFFFFFFFF, size & 0xFFFFFFFF)
        struct.pack_into("<I", zp, BP_EXT_RAMDISK_IMAGE, addr >> 32)
        struct.pack_into("<I", zp, BP_EXT_RAMDISK_SIZE, size >> 32)
    if rsdp_addr is not None:
        struct.pack_into("<Q", zp, BP_ACPI_RSDP_ADDR, rsdp_addr)
    e820 = layout.e820_map(mem_size)
    if len(e820) > E820_MAX_ENTRIES:
        raise ValueError("too many e820 entries")
    zp[BP_E820_ENTRIES] = len(e820)
    for i, (addr, size, type_) in enumerate(e820):
        struct.pack_into("<QQI", zp, BP_E820_TABLE + 20 * i, addr, size, type_)
    return bytes(zp)


def encode_cmdline(kernel: Bzimage, cmdline: str) -> bytes:
    """The NUL-terminated command line, checked against the kernel's limit."""
    data = cmdline.encode() + b"\0"
    limit = min(kernel.cmdline_size, layout.CMDLINE_MAX)
    if len(data) - 1 > limit:
        raise GuestTooLarge(f"kernel command line is {len(data) - 1} bytes; the limit is {limit}")
    return data
