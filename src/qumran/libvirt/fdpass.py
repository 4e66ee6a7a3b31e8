"""Replies that carry file descriptors (libvirt's ``VIR_NET_REPLY_WITH_FDS``).

On the wire (virnetmessage.c, virnetclient.c): the packet's type is REPLY_WITH_FDS, its
payload starts with the count of descriptors (an XDR unsigned int) before the reply
itself, and after the whole packet each descriptor follows on its own, as one byte sent
with SCM_RIGHTS. The client reads the packet with plain reads of exactly its length and
then each descriptor with recvmsg, so nothing may come between them: everything queued
earlier is flushed first, and the packet and its descriptors are then written straight
to the socket with no await in between (no event or console output can slip in).

A client that does not read (its socket buffer full at that point) loses its connection
rather than stall qumrand or get a descriptor glued to the wrong byte.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from typing import Any, NamedTuple

from qumran.libvirt import packet
from qumran.libvirt.packet import Header
from qumran.libvirt.protocol import virnet

log = logging.getLogger(__name__)

_COUNT = struct.Struct(">I")
MAX_FDS = 32  # VIR_NET_MESSAGE_NUM_FDS_MAX


class WithFds(NamedTuple):
    """What a handler returns to answer with descriptors: its reply and the sockets
    whose descriptors go with it (closed here once sent: the client has its copies)."""

    result: Any
    fds: list[socket.socket]


async def send_reply(
    writer: asyncio.StreamWriter, header: Header, body: bytes, fds: list[socket.socket]
) -> bool:
    """Send a reply and its descriptors; False if the connection could not take them
    (then it is to be closed)."""
    try:
        if len(fds) > MAX_FDS:
            raise ValueError(f"{len(fds)} descriptors in one reply (libvirt takes {MAX_FDS})")
        data = packet.build(
            header._replace(type=virnet.VIR_NET_REPLY_WITH_FDS, status=packet.OK),
            _COUNT.pack(len(fds)) + body,
        )
        await _flushed(writer)
        if writer.is_closing():
            return False
        # A second socket object on a copy of the descriptor: the transport owns the first.
        raw = writer.get_extra_info("socket")
        with socket.socket(fileno=os.dup(raw.fileno())) as sock:
            try:
                if sock.send(data) != len(data):
                    raise BlockingIOError("the client's socket buffer is full")
                for fd in fds:
                    if socket.send_fds(sock, [b"\0"], [fd.fileno()]) != 1:
                        raise BlockingIOError("the client's socket buffer is full")
            except OSError as exc:
                log.info("libvirt socket: cannot pass a descriptor to the client: %s", exc)
                return False
        return True
    finally:
        for fd in fds:
            fd.close()


async def _flushed(writer: asyncio.StreamWriter) -> None:
    """Wait until every byte the transport has queued is in the socket: with a high-water
    mark of 0, drain() returns only once its buffer is empty."""
    transport = writer.transport
    if not transport.get_write_buffer_size():
        return
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        while transport.get_write_buffer_size() and not writer.is_closing():
            await writer.drain()
    finally:
        transport.set_write_buffer_limits()
