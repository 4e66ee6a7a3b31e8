"""A starting qumrand's first answers, given before its full API has loaded.

Loading the full API (FastAPI, pydantic and the definition's models, uvicorn, the
drivers) costs several hundred ms of CPU, and re-attaching to running VMs waits on each
hypervisor's monitor. Meanwhile the listening socket is already there (bound, or kept
across a restart: ``qumran.daemon.activation``), so a client is never refused; this
module makes the commonest question, ``GET /v1/vms`` (``qumran list``), answered at
once instead of after all that. It needs only the store and ``/proc``: each VM's
document is what the full daemon will show once it has re-attached (the state is the
process's, read now; a VM whose process ended while no daemon watched is shut off,
reason ``gone``). Every other request, and a list request with anything unusual about
it, waits, read but unanswered, and is handed whole to the full server when it starts
(:meth:`EarlyServer.hand_over`). Nothing here changes anything: the full daemon does
that, after its re-attach.

Only light modules are imported here (no pydantic, no HTTP framework): the point is to
answer before those load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from qumran.client.schema import VmInfo
from qumran.daemon.domain import Reason, State, reason_after_restart
from qumran.daemon.store import EventRecord, RuntimeRecord, Store, VmRecord
from qumran.drivers.process import ProcState, proc_cpu_seconds, proc_rss_bytes, proc_state

log = logging.getLogger(__name__)

MAX_HEAD = 16384  # a request head longer than this is not a plain list request
MAX_PENDING = 256  # connections held at once; more wait in the kernel's backlog
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_TRUE = {"true", "1", "yes", "on", "t", "y"}  # what the full API takes for a bool
_FALSE = {"false", "0", "no", "off", "f", "n"}

# Give a connection (its socket and the bytes read from it) to the full server.
Adopt = Callable[[socket.socket, bytes], None]


@dataclass
class _Vm:
    record: VmRecord
    runtime: RuntimeRecord | None
    last: EventRecord | None
    host_key: str | None


class Listing:
    """The VMs as the store has them, each shown as the full daemon will show it."""

    def __init__(self, store: Store, admin_uid: int) -> None:
        self.admin_uid = admin_uid
        runtimes, last = store.runtimes(), store.last_events()
        self._vms = []
        for record in store.vms():
            key = store.host_key(record.uuid)
            self._vms.append(_Vm(record, runtimes.get(record.uuid), last.get(record.uuid),
                                 key[1] if key is not None else None))  # fmt: skip

    def documents(self, uid: int, all: bool) -> list[VmInfo]:
        """What ``GET /v1/vms`` answers ``uid`` (``all``: shut-off VMs too)."""
        found = []
        for vm in self._vms:
            if uid not in (0, self.admin_uid) and uid != vm.record.owner:
                continue
            doc = _document(vm)
            if all or doc["pid"] is not None:
                found.append(doc)
        return found


def _document(vm: _Vm) -> VmInfo:
    """As ``Domain.info`` after the full daemon's re-attach (``reattach.reattach``)."""
    record, rt = vm.record, vm.runtime
    alive = rt is not None and proc_state(rt.pid, rt.start_time)
    if rt is None or alive is ProcState.GONE:
        state = State.SHUTOFF
        reason = Reason.GONE if rt is not None else reason_after_restart(vm.last)
        rt = None
    elif alive is ProcState.STOPPED:  # re-attached as running, then seen stopped at once
        state, reason = State.PAUSED, Reason.SIGNAL
    else:  # paused stays paused while no daemon watches: the monitor will say the same
        paused = vm.last is not None and vm.last.state == State.PAUSED.value
        state, reason = (State.PAUSED if paused else State.RUNNING), Reason.DAEMON_RESTART
    definition = record.definition
    pid = rt.pid if rt is not None else None
    return {
        "name": record.name,
        "uuid": record.uuid,
        "owner": record.owner,
        "state": state.value,
        "reason": reason.value,
        "hypervisor": definition.get("hypervisor", "qemu"),
        "pid": pid,
        "vcpus": definition.get("vcpus", 1),
        "memory_mib": definition.get("memory", 0),
        "autostart": record.autostart,
        "cpu_time": proc_cpu_seconds(pid) if pid else None,
        "rss_bytes": proc_rss_bytes(pid) if pid else None,
        "started_at": rt.started_at if rt is not None else None,
        "uptime": time.time() - rt.started_at if rt is not None else None,
        "definition": definition,
        "pending_definition": record.pending,
        "ssh_host_keys": [vm.host_key] if vm.host_key else [],
    }


@dataclass(frozen=True)
class ListRequest:
    all: bool  # ?all=true: shut-off VMs too
    close: bool  # Connection: close; else the connection stays open for the next request


def list_request(head: bytes) -> ListRequest | None:
    """A plain ``GET /v1/vms`` request head (one request, no body); None for anything
    else, which the full server answers."""
    try:
        lines = head.decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "GET" or parts[2] != "HTTP/1.1":
        return None
    path, _, query = parts[1].partition("?")
    if path != "/v1/vms":
        return None
    close = False
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or name != name.strip():
            return None  # a malformed header: the full server's error
        lowered = name.lower()
        empty = lowered == "content-length" and value.strip() == "0"
        if lowered in ("content-length", "transfer-encoding", "upgrade", "expect") and not empty:
            return None  # a body, or more than a plain request
        if lowered == "connection":
            close = close or "close" in (t.strip().lower() for t in value.split(","))
    params = parse_qsl(query, keep_blank_values=True)
    if any(key != "all" for key, _ in params) or len(params) > 1:
        return None
    if not params:
        return ListRequest(all=False, close=close)
    value = params[0][1].lower()
    if value not in _TRUE and value not in _FALSE:
        return None  # the full API's 400
    return ListRequest(all=value in _TRUE, close=close)


def _answer(docs: list[VmInfo], close: bool) -> bytes:
    body = json.dumps(docs, separators=(",", ":"), ensure_ascii=False).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
    return head % len(body) + (b"connection: close\r\n" if close else b"") + b"\r\n" + body


async def readable(sock: socket.socket) -> None:
    """Until ``sock`` has something to read (or, listening, a connection to accept)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        # Unless whoever closed the socket meanwhile removed it first (its number may
        # already belong to another socket, whose reader this must not remove).
        if sock.fileno() == fd:
            loop.remove_reader(fd)


def _peer_uid(conn: socket.socket) -> int | None:
    try:
        _pid, uid, _gid = _UCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except OSError:
        return None
    return int(uid)


@dataclass(eq=False)
class _Pending:
    conn: socket.socket
    data: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None
    watched: bool = False  # the loop watches conn for us (our reader is registered)
    sending: bool = False  # an answer is being written: the task hands it over after
    given: bool = False  # handed to the full server: conn is no longer ours to touch

    async def readable(self) -> None:
        """Until the client sent more. Read only after this, by the task: a hand-over
        that cancels it meanwhile loses nothing (what was not read stays in the socket)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self.conn.fileno(), wake)
        self.watched = True
        try:
            await ready
        finally:
            self.unwatch()

    def unwatch(self) -> None:
        if self.watched:
            self.watched = False
            asyncio.get_running_loop().remove_reader(self.conn.fileno())


class EarlyServer:
    """Answers list requests on the API socket until the full server takes over."""

    def __init__(self, sock: socket.socket, listing: Listing) -> None:
        # A duplicate: closing it when the full server takes over leaves the socket
        # listening (an asyncio server closes the socket it serves).
        self._sock = sock.dup()
        self._sock.setblocking(False)
        self._listing = listing
        self._pending: set[_Pending] = set()
        self._held: list[_Pending] = []  # read, waiting for the full server
        self._room = asyncio.Semaphore(MAX_PENDING)
        self._accepting: asyncio.Task[None] | None = None
        self._adopt: Adopt | None = None
        self.answered = 0  # list requests answered (for tests and the log)

    def start(self) -> None:
        self._accepting = asyncio.get_running_loop().create_task(self._accept(), name="early")

    async def _accept(self) -> None:
        # Not loop.sock_accept: cancelled (by the hand-over) after its accept() but before
        # this task resumed, it drops the connection it took, and the client, its request
        # unread, is reset. Here the accept() runs in this task, after the wait: a
        # cancellation during the wait leaves the connection in the backlog.
        loop = asyncio.get_running_loop()
        while True:
            await self._room.acquire()
            try:
                await readable(self._sock)
            except BaseException:
                self._room.release()
                raise
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                self._room.release()
                continue
            conn.setblocking(False)
            pending = _Pending(conn)
            self._pending.add(pending)
            pending.task = loop.create_task(self._serve_one(pending), name="early request")

    async def _serve_one(self, pending: _Pending) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:  # each request on the connection (HTTP/1.1 keeps it open)
                while b"\r\n\r\n" not in pending.data and len(pending.data) <= MAX_HEAD:
                    await pending.readable()
                    try:
                        chunk = pending.conn.recv(65536)
                    except BlockingIOError:
                        continue
                    if not chunk:  # the client is done
                        self._close(pending)
                        return
                    pending.data += chunk
                head, _, rest = bytes(pending.data).partition(b"\r\n\r\n")
                asked = list_request(head) if not rest else None
                uid = _peer_uid(pending.conn) if asked is not None else None
                if asked is None or uid is None:
                    self._give(pending)
                    return
                pending.data.clear()
                pending.sending = True
                await loop.sock_sendall(
                    pending.conn, _answer(self._listing.documents(uid, asked.all), asked.close)
                )
                pending.sending = False
                self.answered += 1
                if asked.close:
                    self._close(pending)
                    return
                if self._adopt is not None:  # the full server serves now: the rest is its
                    self._give(pending)
                    return
        except OSError as exc:
            log.debug("early answer: %s", exc)
            if not pending.given:
                self._close(pending)

    def _close(self, pending: _Pending) -> None:
        self._done(pending)
        pending.conn.close()

    def _done(self, pending: _Pending) -> None:
        if pending in self._pending:
            self._pending.discard(pending)
            self._room.release()

    def _give(self, pending: _Pending) -> None:
        self._done(pending)
        pending.given = True
        if self._adopt is not None:
            self._adopt(pending.conn, bytes(pending.data))
        else:
            self._held.append(pending)

    def hand_over(self, adopt: Adopt) -> None:
        """The full server is serving: stop accepting, and give it every connection held
        or still being read (with what was read of it)."""
        self._adopt = adopt
        self.close()
        for pending in list(self._pending):  # still reading: the full server reads on
            if pending.sending:
                continue  # its task gives it over once the answer is written
            pending.unwatch()  # now: the full server watches this fd next
            if pending.task is not None:
                pending.task.cancel()
            self._give(pending)
        held, self._held = self._held, []
        for pending in held:
            adopt(pending.conn, bytes(pending.data))
        if self.answered:
            log.info("answered %d list request(s) while starting", self.answered)

    def close(self) -> None:
        """Stop accepting (the listening socket itself stays open)."""
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        # The task ends on its next step; the reader goes now, before the socket it
        # watches is closed (see ``readable``).
        if self._sock.fileno() >= 0:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing registered
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
        with contextlib.suppress(OSError):
            self._sock.close()

    def abandon(self) -> None:
        """Start-up failed: close every connection held."""
        self.close()
        for pending in [*self._pending, *self._held]:
            pending.unwatch()
            if pending.task is not None:
                pending.task.cancel()
            pending.conn.close()
        self._pending.clear()
        self._held.clear()
