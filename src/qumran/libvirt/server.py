"""libvirt's remote protocol on a UNIX socket of its own, for virsh, virt-manager and the
libvirt bindings (``qemu+unix:///system?socket=PATH``).

One :class:`Connection` per client. The caller is the peer's uid as the kernel vouches
for it (SO_PEERCRED), and every procedure acts as that caller through the Manager, so
the ownership rules are the HTTP API's. A connection is a small state machine: ``NEW``
answers only what a client sends before CONNECT_OPEN (auth list, feature probes,
keepalive), ``OPEN`` everything, ``CLOSED`` nothing. Calls are handled one at a time in
the order they arrive (libvirt's clients wait for each answer anyway); events and
console output are written by their own tasks between whole packets.

Hostile input: a length over libvirt's limit or under a header closes the connection
before anything is allocated; a payload that does not decode is an error reply
(VIR_ERR_RPC), never a crash; a connection that starts a packet and stalls is closed.

A restart in place (``qumran daemon restart``) hands the listening socket to the next
qumrand: what is still in the backlog waits for it. What this one has accepted is
served until it falls quiet (:meth:`Server.serve`): every call a client has sent gets
its answer, never a reset; a client between calls then sees the connection end, as
with libvirtd's restart, and connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from qumran.daemon import listeners
from qumran.errors import QumranError
from qumran.libvirt import constants as c
from qumran.libvirt import fdpass, packet
from qumran.libvirt.errors import RpcError, no_support
from qumran.libvirt.packet import Header, PacketError
from qumran.libvirt.protocol import keepalive, remote
from qumran.libvirt.xdr import XdrError

if TYPE_CHECKING:
    from qumran.daemon.manager import Caller, Manager

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}

# A restart's hand-over: how long a connection that has been answered may stay quiet before
# it is closed (libvirt's clients send their next call as soon as they have the answer; one
# that has sent nothing yet gets listeners.FIRST_REQUEST_GRACE), and the most the whole
# hand-over may take before what is left is closed.
QUIET = 0.1
HAND_OVER_LIMIT = 5.0

Handler = Callable[["Connection", Any], Awaitable[Any]]
HANDLERS: dict[int, Handler] = {}  # procedure number -> handler (qumran.libvirt.procedures)

# What a client may call before CONNECT_OPEN (remote_driver.c: doRemoteOpen's order).
_BEFORE_OPEN = frozenset(
    {remote.REMOTE_PROC_AUTH_LIST, remote.REMOTE_PROC_CONNECT_SUPPORTS_FEATURE,
     remote.REMOTE_PROC_CONNECT_OPEN, remote.REMOTE_PROC_CONNECT_CLOSE}
)  # fmt: skip


def handles(proc: int) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[proc] = fn
        return fn

    return register


class ConnState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Server:
    """The listener: connections counted per uid, as on the HTTP API's socket."""

    def __init__(
        self, manager: Manager, *, per_uid: int, privileged: int, packet_timeout: float
    ) -> None:
        self.manager = manager
        self.per_uid = per_uid
        self.privileged = privileged
        self.packet_timeout = packet_timeout
        self.count: Counter[int] = Counter()
        self.connections: set[Connection] = set()
        self.handing_over = False
        self._emptied = asyncio.Event()

    def cap(self, uid: int) -> int:
        return self.privileged if uid in (0, os.geteuid()) else self.per_uid

    async def serve(self, sock: socket.socket, hand_over: asyncio.Event) -> None:
        """Serve ``sock`` (closed at the end) until cancelled, which closes every
        connection, or until ``hand_over`` is set: then accept no more and end once every
        connection has gone quiet (see the module's docstring)."""
        from qumran.libvirt import procedures  # noqa: F401  (registers the handlers)

        server = await asyncio.start_unix_server(self._accept, sock=sock)
        try:
            async with server:
                await hand_over.wait()
                self.handing_over = True  # connections from here on get the first grace
                await listeners.stop_accepting(server)  # each accepted is a Connection
                await self._hand_over()
        finally:
            for conn in list(self.connections):
                conn.close()

    async def _hand_over(self) -> None:
        for conn in self.connections:
            conn.hand_over()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HAND_OVER_LIMIT):
                while self.connections:
                    self._emptied.clear()
                    await self._emptied.wait()
        if self.connections:
            log.warning("libvirt socket: closing %d connection(s) still busy at the restart",
                        len(self.connections))  # fmt: skip

    def quiet_deadline(self, answered: int) -> float | None:
        """When a connection waiting for its next call is closed: never, unless handing over."""
        if not self.handing_over:
            return None
        grace = QUIET if answered else listeners.FIRST_REQUEST_GRACE
        return asyncio.get_running_loop().time() + grace

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from qumran.daemon.manager import Caller

        sock = writer.get_extra_info("socket")
        pid, uid, gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        if self.count[uid] >= self.cap(uid):
            log.warning("libvirt socket: refusing a connection of uid %d: it has %d open",
                        uid, self.count[uid])  # fmt: skip
            writer.close()
            return
        self.count[uid] += 1
        conn = Connection(self, Caller(uid=uid, gid=gid, pid=pid), reader, writer)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            if not self.connections:
                self._emptied.set()
            self.count[uid] -= 1
            if self.count[uid] <= 0:
                del self.count[uid]


class Connection:
    def __init__(
        self,
        server: Server,
        caller: Caller,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.manager = server.manager
        self.caller = caller
        self.reader = reader
        self.writer = writer
        self.state = ConnState.NEW
        self.tasks: set[asyncio.Task[None]] = set()  # event and stream pumps
        self.callbacks: dict[int, tuple[int, str | None]] = {}  # id -> (event id, uuid)
        self.next_callback = 1
        self.streams: dict[int, Any] = {}  # serial -> a stream (libvirt.console.ConsoleStream)
        self.event_queue: Any = None
        self.answered = 0  # packets handled
        self._between: asyncio.Timeout | None = None  # waiting for the next packet

    async def run(self) -> None:
        try:
            while self.state is not ConnState.CLOSED:
                body = await self._read_packet()
                if body is None:
                    break
                header, payload = packet.parse(body)
                await self._dispatch(header, payload)
                self.answered += 1
        except PacketError as exc:
            log.info("libvirt socket: closing the connection of uid %d: %s", self.caller.uid, exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()

    def hand_over(self) -> None:
        """qumrand is restarting: close once quiet between packets."""
        if self._between is not None:
            self._between.reschedule(self.server.quiet_deadline(self.answered))

    async def _read_packet(self) -> bytes | None:
        try:
            async with asyncio.timeout(self.server.quiet_deadline(self.answered)) as between:
                self._between = between
                word = await self.reader.readexactly(packet.LEN_SIZE)
        except TimeoutError:
            return None  # quiet while qumrand hands over to the next one
        except asyncio.IncompleteReadError:
            return None  # the client went away between packets
        finally:
            self._between = None
        length = packet.packet_length(word)
        try:
            async with asyncio.timeout(self.server.packet_timeout):
                return await self.reader.readexactly(length)
        except TimeoutError:
            raise PacketError(f"a packet of {length} bytes did not arrive in time") from None

    def close(self) -> None:
        self.state = ConnState.CLOSED
        for task in list(self.tasks):
            task.cancel()
        for stream in list(self.streams.values()):
            stream.close()
        self.streams.clear()
        if self.event_queue is not None:
            self.manager.events.unsubscribe(self.event_queue)
            self.event_queue = None
        self.writer.close()

    def spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # --- sending ------------------------------------------------------------------------

    def send(self, header: Header, payload: bytes = b"") -> None:
        if self.state is ConnState.CLOSED or self.writer.is_closing():
            return
        self.writer.write(packet.build(header, payload))

    def send_error(self, header: Header, err: RpcError, ptype: int = packet.REPLY) -> None:
        error = remote.remote_error(
            code=err.code, domain=err.domain, message=err.message, level=c.VIR_ERR_ERROR,
            dom=None, str1=err.message, str2=None, str3=None, int1=0, int2=0, net=None,
        )  # fmt: skip
        reply = header._replace(type=ptype, status=packet.ERROR)
        self.send(reply, remote.xdr_remote_error.pack(error))

    def send_event(self, proc: int, msg: Any) -> None:
        codec = remote.PROCEDURES[proc].args
        assert codec is not None
        header = Header(remote.REMOTE_PROGRAM, remote.REMOTE_PROTOCOL_VERSION, proc,
                        packet.MESSAGE, 0, packet.OK)  # fmt: skip
        self.send(header, codec.pack(msg))

    # --- receiving ----------------------------------------------------------------------

    async def _dispatch(self, header: Header, payload: memoryview) -> None:
        if header.prog == keepalive.KEEPALIVE_PROGRAM:
            self._keepalive(header)
        elif header.prog != remote.REMOTE_PROGRAM or header.vers != remote.REMOTE_PROTOCOL_VERSION:
            if header.type == packet.CALL:
                self.send_error(header, RpcError(
                    c.VIR_ERR_RPC,
                    f"cannot find program {header.prog:#x} version {header.vers}",
                    c.VIR_FROM_RPC,
                ))  # fmt: skip
        elif header.type == packet.CALL:
            await self._call(header, payload)
        elif header.type == packet.STREAM:
            stream = self.streams.get(header.serial)
            if stream is not None:
                await stream.received(header, payload)
        else:
            log.debug("libvirt socket: ignoring a packet of type %d", header.type)
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    def _keepalive(self, header: Header) -> None:
        # virkeepalive.c: a PING (a message, serial 0) is answered with a PONG.
        if header.proc == keepalive.KEEPALIVE_PROC_PING and header.type == packet.MESSAGE:
            self.send(header._replace(proc=keepalive.KEEPALIVE_PROC_PONG, status=packet.OK))

    async def _call(self, header: Header, payload: memoryview) -> None:
        reply = header._replace(type=packet.REPLY, status=packet.OK)
        proc = remote.PROCEDURES.get(header.proc)
        try:
            if proc is None:
                raise RpcError(c.VIR_ERR_NO_SUPPORT, f"unknown procedure: {header.proc}")
            handler = HANDLERS.get(header.proc)
            if handler is None:
                log.debug("libvirt socket: %s is not implemented", proc.name)
                raise no_support(f"vir{_camel(proc.name)}")
            if self.state is not ConnState.OPEN and header.proc not in _BEFORE_OPEN:
                raise RpcError(c.VIR_ERR_RPC, "connection not open: call CONNECT_OPEN first",
                               c.VIR_FROM_RPC)  # fmt: skip
            args = _decode(proc, payload)
            self.current = header
            result = await handler(self, args)
            fds = None
            if isinstance(result, fdpass.WithFds):  # a reply with descriptors after it
                result, fds = result
            body = b"" if proc.ret is None else proc.ret.pack(result)
        except RpcError as err:
            self.send_error(header, err)
            return
        except QumranError as exc:
            from qumran.libvirt.errors import from_qumran

            self.send_error(header, from_qumran(exc))
            return
        except (XdrError, packet.PacketError) as exc:
            log.error("libvirt socket: cannot encode the answer to %s: %s", proc, exc)
            self.send_error(header, RpcError(c.VIR_ERR_INTERNAL_ERROR,
                                             "internal error in qumrand (details in its log)"))
            return  # fmt: skip
        except Exception as exc:  # the caller gets a fixed message; the log has the rest
            log.error("libvirt socket: internal error in %s: %r", proc, exc)
            log.debug("traceback", exc_info=exc)
            self.send_error(header, RpcError(c.VIR_ERR_INTERNAL_ERROR,
                                             "internal error in qumrand (details in its log)"))
            return  # fmt: skip
        if fds is None:
            self.send(reply, body)
        elif not await fdpass.send_reply(self.writer, reply, body, fds):
            self.close()

    current: Header | None = None


def _decode(proc: remote.Procedure, payload: memoryview) -> Any:
    if proc.args is None:
        if len(payload):
            raise RpcError(c.VIR_ERR_RPC, f"{proc.name} takes no arguments", c.VIR_FROM_RPC)
        return None
    try:
        return proc.args.unpack(payload)
    except XdrError as exc:
        raise RpcError(
            c.VIR_ERR_RPC, f"cannot decode the arguments of {proc.name}: {exc}", c.VIR_FROM_RPC
        ) from None


def _camel(name: str) -> str:
    """DOMAIN_GET_BLOCK_INFO -> DomainGetBlockInfo, the public API's name."""
    return "".join(part.capitalize() for part in name.split("_"))
