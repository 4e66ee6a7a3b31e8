"""Tiny bzImages for testing the VMM without Linux: a valid setup header and a few bytes of
64-bit code at the 64-bit entry point (load address + 0x200)."""

from __future__ import annotations

import struct

SETUP_SECTS = 1
PAYLOAD_OFFSET = (SETUP_SECTS + 1) * 512
ENTRY_OFFSET = 0x200

COM1 = 0x3F8
PM1A_CNT = 0x604
RESET_PORT = 0x608
SLP_S5 = (5 << 10) | (1 << 13)  # SLP_TYP = 5 (the DSDT's \_S5), SLP_EN

UD2 = b"\x0f\x0b"
HLT_LOOP = b"\xf4\xeb\xfd"  # hlt; jmp back to hlt


def out_byte(port: int, value: int) -> bytes:
    """mov dx, port; mov al, value; out dx, al"""
    return b"\x66\xba" + struct.pack("<H", port) + b"\xb0" + bytes([value]) + b"\xee"


def out_word(port: int, value: int) -> bytes:
    """mov dx, port; mov ax, value; out dx, ax"""
    return (
        b"\x66\xba" + struct.pack("<H", port) + b"\x66\xb8" + struct.pack("<H", value) + b"\x66\xef"
    )


def print_text(text: bytes) -> bytes:
    return b"".join(out_byte(COM1, c) for c in text)


def bzimage(code: bytes, init_size: int = 1 << 20, version: int = 0x020F) -> bytes:
    """A bzImage whose 64-bit entry runs ``code``."""
    image = bytearray(PAYLOAD_OFFSET + ENTRY_OFFSET + len(code) + 64)
    image[0x1F1] = SETUP_SECTS
    struct.pack_into("<H", image, 0x1FE, 0xAA55)
    image[0x200:0x202] = b"\xeb\x66"  # jump over the header: header length byte 0x66
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, version)
    struct.pack_into("<I", image, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
    struct.pack_into("<I", image, 0x230, 0x200000)  # kernel_alignment
    image[0x234] = 1  # relocatable
    struct.pack_into("<H", image, 0x236, 1)  # xloadflags: XLF_KERNEL_64
    struct.pack_into("<I", image, 0x238, 2048)  # cmdline_size
    struct.pack_into("<Q", image, 0x258, 0x100000)  # pref_address
    struct.pack_into("<I", image, 0x260, init_size)
    start = PAYLOAD_OFFSET + ENTRY_OFFSET
    image[start : start + len(code)] = code
    return bytes(image)


def hello_then_poweroff(text: bytes = b"TINY-HELLO\n") -> bytes:
    return bzimage(print_text(text) + out_word(PM1A_CNT, SLP_S5) + HLT_LOOP)


def reset_on_key(text: bytes = b"TINY-BOOT\n") -> bytes:
    """Print, wait for a byte on COM1 (polling LSR.DR), then reset: one reboot per key."""
    wait_key = (
        b"\x66\xba" + struct.pack("<H", COM1 + 5)  # mov dx, LSR
        + b"\xec"  # in al, dx
        + b"\xa8\x01"  # test al, 1 (data ready)
        + b"\x74\xfb"  # jz back to the in
    )  # fmt: skip
    return bzimage(print_text(text) + wait_key + out_byte(RESET_PORT, 0x06) + HLT_LOOP)


def triple_fault() -> bytes:
    """ud2 with an empty IDT: #UD -> #GP -> #DF -> triple fault (KVM_EXIT_SHUTDOWN)."""
    return bzimage(print_text(b"TINY-CRASH\n") + UD2)


def spin(text: bytes = b"TINY-SPIN\n") -> bytes:
    """Print, then loop forever in the guest (jmp $): something to pause and resume."""
    return bzimage(print_text(text) + b"\xeb\xfe")


def port_loop(count: int, port: int = 0x80) -> bytes:
    """``count`` OUTs to ``port`` (one exit each), then power off: exit-cost measurements."""
    loop = (
        b"\xb9" + struct.pack("<I", count)  # mov ecx, count
        + b"\xe6" + bytes([port])  # out port, al
        + b"\xff\xc9"  # dec ecx
        + b"\x75\xfa"  # jnz back to the out
    )  # fmt: skip
    return bzimage(loop + out_word(PM1A_CNT, SLP_S5) + HLT_LOOP)
