"""A type-0 PCI configuration header with write masks, memory BARs and a capability list.

PCI Local Bus Specification 3.0, 6.1 "Configuration Space Organization" and 6.2.5 "Base
Addresses". Each byte has a write mask: what the driver may change; everything else is
read-only. BAR sizing falls out of the mask: writing all ones reads back ``~(size - 1)``
plus the read-only type bits, as 6.2.5.1 describes.
"""

from __future__ import annotations

import struct

CONFIG_SIZE = 256
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION, CLASS_CODE = 0x08, 0x09
CACHE_LINE, LATENCY, HEADER_TYPE = 0x0C, 0x0D, 0x0E
BAR0 = 0x10
SUBSYSTEM_VENDOR, SUBSYSTEM_ID = 0x2C, 0x2E
CAPABILITIES = 0x34
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D
FIRST_CAPABILITY = 0x40

CMD_IO, CMD_MEMORY, CMD_BUS_MASTER, CMD_INTX_DISABLE = 1 << 0, 1 << 1, 1 << 2, 1 << 10
STATUS_INTERRUPT, STATUS_CAP_LIST = 1 << 3, 1 << 4
BAR_MEM32 = 0x0  # 6.2.5.1: bit 0 = 0 memory, bits 2:1 = 00 anywhere in 32-bit space


class MemoryBar:
    __slots__ = ("index", "size")

    def __init__(self, index: int, size: int) -> None:
        self.index = index
        self.size = size  # a power of two >= 4 KiB

    @property
    def offset(self) -> int:
        return BAR0 + 4 * self.index


class ConfigSpace:
    """256 bytes of configuration space; the owner serialises access."""

    def __init__(
        self, vendor: int, device: int, class_code: int, revision: int = 0,
        subsystem_vendor: int = 0, subsystem_id: int = 0, interrupt_pin: int = 0,
    ) -> None:  # fmt: skip
        self.data = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        self.bars: list[MemoryBar] = []
        self._last_cap = CAPABILITIES
        self._next_cap = FIRST_CAPABILITY
        struct.pack_into("<HH", self.data, VENDOR_ID, vendor, device)
        self.data[REVISION] = revision
        self.data[CLASS_CODE : CLASS_CODE + 3] = class_code.to_bytes(3, "little")
        struct.pack_into("<HH", self.data, SUBSYSTEM_VENDOR, subsystem_vendor, subsystem_id)
        self.data[INTERRUPT_PIN] = interrupt_pin
        self._mask(COMMAND, 2, CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE)
        self._mask(CACHE_LINE, 1, 0xFF)
        self._mask(LATENCY, 1, 0xFF)
        self._mask(INTERRUPT_LINE, 1, 0xFF)

    def _mask(self, offset: int, size: int, mask: int) -> None:
        self.wmask[offset : offset + size] = mask.to_bytes(size, "little")

    def add_memory_bar(self, index: int, size: int, address: int) -> MemoryBar:
        if size < 4096 or size & (size - 1) or address % size:
            raise ValueError(f"BAR size {size:#x} / address {address:#x} not a valid pair")
        bar = MemoryBar(index, size)
        self.bars.append(bar)
        struct.pack_into("<I", self.data, bar.offset, address | BAR_MEM32)
        self._mask(bar.offset, 4, ~(size - 1) & 0xFFFF_FFF0)
        return bar

    def bar_address(self, bar: MemoryBar) -> int:
        return int(struct.unpack_from("<I", self.data, bar.offset)[0]) & 0xFFFF_FFF0

    def add_capability(self, cap_id: int, body: bytes, wmask: bytes = b"") -> int:
        """Append a capability (id, next, then ``body``); returns its offset."""
        at = self._next_cap
        length = 2 + len(body)
        if at + length > CONFIG_SIZE:
            raise ValueError("PCI capabilities do not fit in configuration space")
        self.data[at] = cap_id
        self.data[at + 2 : at + length] = body
        if wmask:
            self.wmask[at + 2 : at + 2 + len(wmask)] = wmask
        self.data[self._last_cap if self._last_cap == CAPABILITIES else self._last_cap + 1] = at
        self.data[STATUS] |= STATUS_CAP_LIST
        self._last_cap = at
        self._next_cap = (at + length + 3) & ~3
        return at

    @property
    def command(self) -> int:
        return int(struct.unpack_from("<H", self.data, COMMAND)[0])

    def read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > CONFIG_SIZE:
            return (1 << (8 * size)) - 1
        return int.from_bytes(self.data[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or offset + size > CONFIG_SIZE:
            return
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            mask = self.wmask[offset + i]
            self.data[offset + i] = (self.data[offset + i] & ~mask) | (byte & mask)
