"""libvirt's RPC packets: a length word, a six-field header, a payload.

docs/kbase/internals/rpc.rst (libvirt) and ``protocol/virnetprotocol.x``: the length is
an unsigned 32-bit big-endian count of the whole packet, itself included; the header is
``virNetMessageHeader`` (program, version, procedure, type, serial, status). The length
is checked before a byte of the rest is read, against libvirt's own bound
(``VIR_NET_MESSAGE_MAX``, 32 MiB), and the header is checked whole before the payload is
looked at (rpc.rst, "Data validation").
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from qumran.libvirt.protocol import virnet

LEN_SIZE = virnet.VIR_NET_MESSAGE_LEN_MAX  # 4
HEADER_SIZE = virnet.VIR_NET_MESSAGE_HEADER_MAX  # 24
# The length word does not count towards VIR_NET_MESSAGE_MAX (virnetprotocol.x).
MAX_PACKET = virnet.VIR_NET_MESSAGE_MAX + LEN_SIZE
MAX_PAYLOAD = virnet.VIR_NET_MESSAGE_PAYLOAD_MAX

CALL = virnet.VIR_NET_CALL
REPLY = virnet.VIR_NET_REPLY
MESSAGE = virnet.VIR_NET_MESSAGE
STREAM = virnet.VIR_NET_STREAM
OK = virnet.VIR_NET_OK
ERROR = virnet.VIR_NET_ERROR
CONTINUE = virnet.VIR_NET_CONTINUE
_TYPES = frozenset(
    {CALL, REPLY, MESSAGE, STREAM, virnet.VIR_NET_CALL_WITH_FDS, virnet.VIR_NET_REPLY_WITH_FDS,
     virnet.VIR_NET_STREAM_HOLE}
)  # fmt: skip
_STATUSES = frozenset({OK, ERROR, CONTINUE})

_HEADER = struct.Struct(">IIiiIi")
_LEN = struct.Struct(">I")


class PacketError(ValueError):
    """A packet that breaks the framing: the connection cannot go on after it."""


class Header(NamedTuple):
    prog: int
    vers: int
    proc: int
    type: int
    serial: int
    status: int


def packet_length(word: bytes) -> int:
    """The bytes that follow a length word, once it is known to be within bounds."""
    length: int = _LEN.unpack(word)[0]
    if length < LEN_SIZE + HEADER_SIZE:
        raise PacketError(f"a packet of {length} bytes is shorter than its header")
    if length > MAX_PACKET:
        raise PacketError(f"a packet of {length} bytes is over libvirt's limit of {MAX_PACKET}")
    return length - LEN_SIZE


def parse(body: bytes) -> tuple[Header, memoryview]:
    """The header and payload of a packet (its length word already taken off)."""
    if len(body) < HEADER_SIZE:
        raise PacketError("a packet shorter than its header")
    header = Header(*_HEADER.unpack_from(body))
    if header.type not in _TYPES:
        raise PacketError(f"unknown packet type {header.type}")
    if header.status not in _STATUSES:
        raise PacketError(f"unknown packet status {header.status}")
    return header, memoryview(body)[HEADER_SIZE:]


def build(header: Header, payload: bytes = b"") -> bytes:
    length = LEN_SIZE + HEADER_SIZE + len(payload)
    if length > MAX_PACKET:
        raise PacketError(f"an answer of {length} bytes is over libvirt's limit of {MAX_PACKET}")
    return _LEN.pack(length) + _HEADER.pack(*header) + payload
