"""Pieces shared by every ACPI table: the description header, checksums, Generic Addresses."""

from __future__ import annotations

import struct

OEM_ID = b"QUMRAN"
OEM_TABLE_ID = b"QUMRANVM"
OEM_REVISION = 1
CREATOR_ID = b"QMRN"
CREATOR_REVISION = 1

# System Description Table Header (ACPI 6.4, 5.2.6, table "DESCRIPTION_HEADER Fields"):
# Signature, Length, Revision, Checksum, OEMID, OEM Table ID, OEM Revision, Creator ID,
# Creator Revision.
HEADER = struct.Struct("<4sIBB6s8sI4sI")
HEADER_LEN = HEADER.size
CHECKSUM_OFFSET = 9
assert HEADER_LEN == 36

# Generic Address Structure (ACPI 6.4, 5.2.3.2): Address Space ID, Register Bit Width,
# Register Bit Offset, Access Size, Address.
GAS = struct.Struct("<BBBBQ")
assert GAS.size == 12
SPACE_SYSTEM_IO = 1
ACCESS_UNDEFINED, ACCESS_BYTE, ACCESS_WORD, ACCESS_DWORD = 0, 1, 2, 3


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` plus itself sum to 0 mod 256."""
    return -sum(data) & 0xFF


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A complete table: header (length and checksum filled in) followed by ``body``."""
    length = HEADER_LEN + len(body)
    head = HEADER.pack(
        signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, OEM_REVISION,
        CREATOR_ID, CREATOR_REVISION,
    )  # fmt: skip
    raw = bytearray(head + body)
    raw[CHECKSUM_OFFSET] = checksum(bytes(raw))
    return bytes(raw)


def gas_io(port: int, width_bytes: int, access: int = ACCESS_UNDEFINED) -> bytes:
    """A Generic Address for ``width_bytes`` bytes of I/O space at ``port`` (0: none)."""
    if port == 0:
        return bytes(GAS.size)
    return GAS.pack(SPACE_SYSTEM_IO, 8 * width_bytes, 0, access, port)
