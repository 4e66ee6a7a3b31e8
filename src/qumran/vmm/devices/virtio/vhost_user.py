"""The vhost-user protocol, front-end side: messages over a UNIX socket to a back end that
serves a device's rings in its own process (QEMU ``docs/interop/vhost-user.rst``).

This module is the wire only: framing, the request numbers and payload layouts, file
descriptors passed as SCM_RIGHTS, and REPLY_ACK. What to send when (the ring set-up, the
reconnect) is the device's business (``vhost_user_blk.py``).

Every message is a 12-byte header (request, flags, payload size; all little-endian u32)
and its payload. Flags hold the protocol version (1) in bits 0-1, REPLY (bit 2) on the
back end's answers and NEED_REPLY (bit 3) on a request whose success the front end wants
confirmed, which it may ask only once REPLY_ACK is negotiated. Requests that have a reply
of their own (GET_*) never carry NEED_REPLY.

The socket is blocking with a timeout: the calls come from vCPU threads (the driver set
DRIVER_OK) and from the device's connection thread, and a back end that stops answering
must turn into an error, not a vCPU stuck forever. It is ``_socket``'s, as everywhere in
the VMM: ``socket.py`` builds enum classes on import, resident memory in every VM process.
"""

from __future__ import annotations

import _socket
import array
import contextlib
import os
import struct
import threading

from qumran.vmm.devices.errors import DeviceError

# Front-end requests (vhost-user.rst, "Front-end message types").
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
SET_MEM_TABLE = 5
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18
GET_CONFIG = 24
GET_INFLIGHT_FD = 31
SET_INFLIGHT_FD = 32

NAMES = {1: "GET_FEATURES", 2: "SET_FEATURES", 3: "SET_OWNER", 5: "SET_MEM_TABLE",
         8: "SET_VRING_NUM", 9: "SET_VRING_ADDR", 10: "SET_VRING_BASE", 11: "GET_VRING_BASE",
         12: "SET_VRING_KICK", 13: "SET_VRING_CALL", 15: "GET_PROTOCOL_FEATURES",
         16: "SET_PROTOCOL_FEATURES", 17: "GET_QUEUE_NUM", 18: "SET_VRING_ENABLE",
         24: "GET_CONFIG", 31: "GET_INFLIGHT_FD", 32: "SET_INFLIGHT_FD"}  # fmt: skip

VERSION = 0x1
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
HEADER = struct.Struct("<III")
MAX_PAYLOAD = 4096  # the largest payload we accept (a config space, a memory table)
MAX_FDS = 8  # VHOST_MEMORY_BASELINE_NREGIONS: fds one message may carry

# Virtio feature bit 30, "VHOST_USER_F_PROTOCOL_FEATURES": the back end speaks protocol
# features (GET/SET_PROTOCOL_FEATURES); when acked, rings start disabled (SET_VRING_ENABLE).
F_PROTOCOL_FEATURES = 1 << 30

# Protocol feature bits ("Protocol features").
PROTOCOL_MQ = 1 << 0
PROTOCOL_REPLY_ACK = 1 << 3
PROTOCOL_CONFIG = 1 << 9
PROTOCOL_INFLIGHT_SHMFD = 1 << 12
PROTOCOL_NAMES = {PROTOCOL_MQ: "MQ", PROTOCOL_REPLY_ACK: "REPLY_ACK", PROTOCOL_CONFIG: "CONFIG",
                  PROTOCOL_INFLIGHT_SHMFD: "INFLIGHT_SHMFD"}  # fmt: skip

# Payloads ("Message types" section of the spec, packed, little-endian).
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")  # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")  # index, flags, descriptor, used, available, log
MEMORY_HEADER = struct.Struct("<II")  # nregions, padding
MEMORY_REGION = struct.Struct("<QQQQ")  # guest address, size, user address, mmap offset
CONFIG_HEADER = struct.Struct("<III")  # offset, size, flags; then the bytes
INFLIGHT = struct.Struct("<QQHH")  # mmap size, mmap offset, num queues, queue size
VRING_NOFD = 1 << 8  # SET_VRING_KICK/CALL: no fd passed (polling mode); never sent by us


# Seconds a back end may take to answer: generous, for a loaded host (a storage daemon
# answers in microseconds), but bounded, so that a vCPU thread is never stuck for good.
TIMEOUT = 15.0


class Disconnected(DeviceError):
    """The back end closed the socket, or stopped answering."""


class Connection:
    """One connected vhost-user socket; requests are serialised by a lock."""

    def __init__(self, sock: _socket.socket, path: str, timeout: float = TIMEOUT) -> None:
        sock.settimeout(timeout)
        self.sock, self.path = sock, path
        self.reply_ack = False  # set once REPLY_ACK is negotiated
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, path: str, timeout: float = TIMEOUT) -> Connection:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise Disconnected(f"cannot connect to {path}: {exc.strerror or exc}") from None
        return cls(sock, path, timeout)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # --- requests -------------------------------------------------------------------------

    def get_u64(self, request: int) -> int:
        payload, _ = self.call(request, b"", reply=True)
        return self._unpack(U64, payload, request)[0]

    def set_u64(self, request: int, value: int, fds: list[int] | None = None) -> None:
        self.call(request, U64.pack(value), fds)

    def set_state(self, request: int, index: int, num: int) -> None:
        self.call(request, VRING_STATE.pack(index, num))

    def get_vring_base(self, index: int) -> int:
        payload, _ = self.call(GET_VRING_BASE, VRING_STATE.pack(index, 0), reply=True)
        return self._unpack(VRING_STATE, payload, GET_VRING_BASE)[1]

    def set_vring_fd(self, request: int, index: int, fd: int) -> None:
        self.call(request, U64.pack(index), [fd])

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int) -> None:
        self.call(SET_VRING_ADDR, VRING_ADDR.pack(index, 0, desc, used, avail, 0))

    def set_mem_table(self, fd: int, regions: tuple[tuple[int, int, int, int], ...]) -> None:
        """Guest RAM: every region is a window of the one memfd ``fd``."""
        if len(regions) > MAX_FDS:
            raise DeviceError(f"vhost-user: {len(regions)} memory regions, at most {MAX_FDS}")
        body = MEMORY_HEADER.pack(len(regions), 0)
        body += b"".join(MEMORY_REGION.pack(*r) for r in regions)
        self.call(SET_MEM_TABLE, body, [fd] * len(regions))

    def get_config(self, size: int) -> bytes:
        payload, _ = self.call(GET_CONFIG, CONFIG_HEADER.pack(0, size, 0) + bytes(size), reply=True)
        offset, got, _ = self._unpack(CONFIG_HEADER, payload, GET_CONFIG)
        data = payload[CONFIG_HEADER.size :]
        if offset != 0 or got != size or len(data) != size:
            raise DeviceError(f"vhost-user {self.path}: GET_CONFIG: the back end refused it")
        return data

    def get_inflight_fd(self, queues: int, queue_size: int) -> tuple[int, int, int]:
        """A shared buffer where the back end logs requests in flight: (fd, size, offset)."""
        payload, fds = self.call(GET_INFLIGHT_FD, INFLIGHT.pack(0, 0, queues, queue_size),
                                 reply=True)  # fmt: skip
        size, offset, _, _ = self._unpack(INFLIGHT, payload, GET_INFLIGHT_FD)
        if len(fds) != 1:
            for fd in fds:
                _close(fd)
            raise DeviceError(f"vhost-user {self.path}: GET_INFLIGHT_FD: no file descriptor")
        return fds[0], size, offset

    def set_inflight_fd(self, fd: int, size: int, offset: int, queues: int, qsize: int) -> None:
        self.call(SET_INFLIGHT_FD, INFLIGHT.pack(size, offset, queues, qsize), [fd])

    # --- framing --------------------------------------------------------------------------

    def call(self, request: int, payload: bytes, fds: list[int] | None = None,
             reply: bool = False) -> tuple[bytes, list[int]]:  # fmt: skip
        """Send a request; its reply (payload, fds) if it has one, or its REPLY_ACK."""
        ack = self.reply_ack and not reply
        flags = VERSION | (FLAG_NEED_REPLY if ack else 0)
        message = HEADER.pack(request, flags, len(payload)) + payload
        with self._lock:
            try:
                if fds:
                    rights = array.array("i", fds)
                    self.sock.sendmsg([message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
                else:
                    self.sock.sendall(message)
                if not (reply or ack):
                    return b"", []
                answer, got = self._receive(request)
            except (OSError, EOFError) as exc:
                # The conversation is out of step (a reply may still come): end it, so that
                # whoever watches the socket sees it hang up and starts over.
                with contextlib.suppress(OSError):
                    self.sock.shutdown(_socket.SHUT_RDWR)
                why = getattr(exc, "strerror", None) or exc
                raise Disconnected(f"vhost-user {self.path}: {_name(request)}: {why}") from None
        if ack:
            for fd in got:
                _close(fd)
            status = self._unpack(U64, answer, request)[0]
            if status != 0:
                raise DeviceError(f"vhost-user {self.path}: the back end refused {_name(request)}"
                                  f" (status {status})")  # fmt: skip
        return answer, got

    def _receive(self, request: int) -> tuple[bytes, list[int]]:
        fds = array.array("i")
        space = _socket.CMSG_SPACE(MAX_FDS * fds.itemsize)
        data, anc, _, _ = self.sock.recvmsg(HEADER.size, space)
        for level, kind, blob in anc:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds.frombytes(blob[: len(blob) - len(blob) % fds.itemsize])
        try:
            if len(data) < HEADER.size:
                data += self._exactly(HEADER.size - len(data))
            got, flags, size = HEADER.unpack(data)
            if got != request or not flags & FLAG_REPLY or size > MAX_PAYLOAD:
                raise DeviceError(f"vhost-user {self.path}: a bad reply to {_name(request)} "
                                  f"(request {got}, flags {flags:#x}, {size} bytes)")  # fmt: skip
            return self._exactly(size), list(fds)
        except BaseException:
            for fd in fds:
                _close(fd)
            raise

    def _exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError("the back end closed the connection")
            out += chunk
        return bytes(out)

    def _unpack(self, layout: struct.Struct, payload: bytes, request: int) -> tuple[int, ...]:
        if len(payload) < layout.size:
            raise DeviceError(f"vhost-user {self.path}: {_name(request)}: a reply of "
                              f"{len(payload)} bytes, expected {layout.size}")  # fmt: skip
        return layout.unpack_from(payload)


def _name(request: int) -> str:
    return NAMES.get(request, f"request {request}")


def _close(fd: int) -> None:
    os.close(fd)
