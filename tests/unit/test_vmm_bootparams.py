"""The boot protocol: bzImage checks, zero page layout, e820, initrd placement."""

from __future__ import annotations

import struct

import pytest

from qumran.vmm.arch import bootparams as bp
from qumran.vmm.arch import layout
from qumran.vmm.errors import BadKernel, GuestTooLarge

MiB = layout.MiB


def make_image(version: int = 0x020F, xloadflags: int = 1, init_size: int = 51 * MiB) -> bytes:
    """A bzImage header like Debian's: relocatable, pref_address 16 MiB."""
    image = bytearray(8192)
    image[0x1F1] = 1  # setup_sects
    struct.pack_into("<H", image, 0x1FE, 0xAA55)
    image[0x201] = 0x66
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, version)
    struct.pack_into("<I", image, 0x22C, 0x7FFFFFFF)
    struct.pack_into("<H", image, 0x236, xloadflags)
    struct.pack_into("<I", image, 0x238, 2047)
    struct.pack_into("<Q", image, 0x258, 16 * MiB)
    struct.pack_into("<I", image, 0x260, init_size)
    image[1024:1028] = b"KERN"  # first payload bytes, after (1 + 1) sectors
    return bytes(image)


def test_parse_splits_header_and_payload() -> None:
    image = make_image()
    k = bp.parse_bzimage(image[: bp.HEAD_SIZE], size=len(image))
    assert image[k.payload_offset : k.payload_offset + 4] == b"KERN"
    assert k.payload_offset + k.payload_size == len(image)
    assert k.header[0] == 1 and len(k.header) == 0x202 + 0x66 - 0x1F1
    assert (k.version, k.pref_address, k.init_size) == (0x020F, 16 * MiB, 51 * MiB)
    assert k.entry_64 == 0x100200


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (b"\x7fELF" + bytes(2000), "no Linux setup header"),
        (bytes(100), "only 100 bytes"),
        (make_image(version=0x020A), "too old"),
        (make_image(xloadflags=0), "no 64-bit entry point"),
    ],
)
def test_rejects_what_is_not_a_64bit_bzimage(image: bytes, reason: str) -> None:
    with pytest.raises(BadKernel, match=reason):
        bp.parse_bzimage(image, "k")


def test_setup_sects_zero_means_four() -> None:
    image = bytearray(make_image())
    image[0x1F1] = 0
    assert bp.parse_bzimage(bytes(image)).payload_offset == 5 * 512


def test_a_file_that_ends_in_its_setup_code_is_truncated() -> None:
    image = make_image()
    with pytest.raises(BadKernel, match="truncated"):
        bp.parse_bzimage(image[: bp.HEAD_SIZE], size=1024)


def test_memory_minimum_follows_pref_address_and_init_size() -> None:
    k = bp.parse_bzimage(make_image())
    assert bp.kernel_end(k) == 67 * MiB  # 16 MiB + 51 MiB, the ~70 MiB measured
    bp.check_memory(k, 68 * MiB)
    with pytest.raises(GuestTooLarge, match="at least 68 MiB"):
        bp.check_memory(k, 64 * MiB)


def test_initrd_goes_high_and_page_aligned_but_not_over_the_kernel() -> None:
    k = bp.parse_bzimage(make_image())
    addr = bp.place_initrd(k, 256 * MiB, 10 * MiB + 123)
    assert addr % layout.PAGE_SIZE == 0
    assert addr + 10 * MiB + 123 <= 256 * MiB
    assert addr >= bp.kernel_end(k)
    with pytest.raises(GuestTooLarge, match="memory too small"):
        bp.place_initrd(k, 128 * MiB, 100 * MiB)


def test_initrd_stays_below_the_mmio_gap_with_large_memory() -> None:
    k = bp.parse_bzimage(make_image())
    addr = bp.place_initrd(k, 8 * layout.GiB, 4 * MiB)
    assert addr + 4 * MiB <= layout.MMIO_GAP_START


def test_zero_page_fields() -> None:
    k = bp.parse_bzimage(make_image())
    zp = bp.build_zero_page(k, 512 * MiB, 0x20000, (0x1000_0000, 0x1234), 0xE0000)
    assert len(zp) == 4096
    assert zp[0x202:0x206] == b"HdrS"  # setup header copied
    assert zp[0x210] == 0xFF  # type_of_loader
    assert zp[0x211] & 0x81 == 0x81  # LOADED_HIGH | CAN_USE_HEAP
    assert struct.unpack_from("<I", zp, 0x228)[0] == 0x20000  # cmd_line_ptr
    assert struct.unpack_from("<II", zp, 0x218) == (0x1000_0000, 0x1234)  # ramdisk
    assert struct.unpack_from("<Q", zp, 0x070)[0] == 0xE0000  # acpi_rsdp_addr
    count = zp[0x1E8]
    entries = [struct.unpack_from("<QQI", zp, 0x2D0 + 20 * i) for i in range(count)]
    assert entries == layout.e820_map(512 * MiB)
    ram = [(a, s) for a, s, t in entries if t == layout.E820_RAM]
    assert sum(s for _, s in ram) == 512 * MiB - (0xA0000 - 0x9FC00) - (0x100000 - 0xA0000)


def test_e820_splits_around_the_mmio_gap() -> None:
    entries = layout.e820_map(4 * layout.GiB)
    ram = [(a, s) for a, s, t in entries if t == layout.E820_RAM]
    assert ram[-2] == (layout.HIGH_MEMORY, layout.MMIO_GAP_START - layout.HIGH_MEMORY)
    assert ram[-1] == (layout.MMIO_GAP_END, 4 * layout.GiB - layout.MMIO_GAP_START)
    for a, s, _ in entries:  # nothing overlaps the 3-4 GiB hole or the ACPI area as RAM
        assert not (a < layout.MMIO_GAP_END and a + s > layout.MMIO_GAP_START)


def test_command_line_limit() -> None:
    k = bp.parse_bzimage(make_image())
    assert bp.encode_cmdline(k, "console=ttyS0") == b"console=ttyS0\0"
    with pytest.raises(GuestTooLarge, match="limit is 2047"):
        bp.encode_cmdline(k, "x" * 2048)
