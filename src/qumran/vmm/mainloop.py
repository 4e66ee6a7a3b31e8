"""The VMM process's main thread: one selectors loop for the control socket, the consoles
and the guest's events.

Not asyncio: importing it (with the ``ssl`` module and libcrypto it brings along) costs a
VMM process about 10 MiB of resident memory, and a few listening sockets need none of it.
For the same reason epoll is used directly (not ``selectors``) and sockets are ``_socket``'s
(``socket.py`` builds enum classes on import). vCPU threads and signal handlers hand work to
the loop with :meth:`MainLoop.call_soon_threadsafe` (or :meth:`MainLoop.call_later`).
"""

from __future__ import annotations

import _socket
import collections
import contextlib
import heapq
import itertools
import os
import select
import time
from collections.abc import Callable

from qumran.vmm.log import get_logger

log = get_logger(__name__)

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
_HANGUP = select.EPOLLHUP | select.EPOLLERR


class MainLoop:
    """Callbacks on readiness of file descriptors, plus calls posted from other threads."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._watched: dict[int, tuple[int, Callable[[int], None] | None]] = {}
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, READ)
        self._watched[self._wake] = (READ, None)
        # A deque, not a list under a lock: a signal handler posts here, and it may run on
        # the main thread while the loop itself is in the middle of taking calls out.
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._status: int | None = None
        # (deadline, sequence, callback): only the loop's thread touches it.
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()

    def watch(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(ready_events)`` whenever ``fd`` is ready for ``events`` (READ,
        WRITE or both); a hang-up or error counts as ready for what is watched."""
        if fd in self._watched:
            self._epoll.modify(fd, events)
        else:
            self._epoll.register(fd, events)
        self._watched[fd] = (events, callback)

    def unwatch(self, fd: int) -> None:
        if self._watched.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):  # already closed
                self._epoll.unregister(fd)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop's thread; from any thread or a signal handler."""
        self._calls.append(callback)
        if self._wake >= 0:
            with contextlib.suppress(OSError):  # closed: the process is on its way out
                os.eventfd_write(self._wake, 1)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop's thread ``delay`` seconds from now; from any thread."""
        deadline = time.monotonic() + delay
        entry = (deadline, next(self._sequence), callback)
        self.call_soon_threadsafe(lambda: heapq.heappush(self._timers, entry))

    def stop(self, status: int) -> None:
        """Make :meth:`run` return ``status`` (on the loop's thread)."""
        self._status = status

    def run(self) -> int:
        while self._status is None:
            self._run_calls()
            timeout = self._run_timers()
            if self._status is not None:
                break
            for fd, ready in self._epoll.poll(timeout):
                events, callback = self._watched.get(fd, (0, None))
                if fd == self._wake:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wake)
                elif callback is not None:  # None: unwatched by an earlier callback
                    callback((ready | (events if ready & _HANGUP else 0)) & events)
        return self._status

    def _run_calls(self) -> None:
        while self._calls and self._status is None:
            self._calls.popleft()()

    def _run_timers(self) -> float:
        """Run the timers that are due; the seconds until the next one (-1: none)."""
        timers = self._timers
        while timers and self._status is None:
            wait = timers[0][0] - time.monotonic()
            if wait > 0:
                return wait
            heapq.heappop(timers)[2]()
        return -1

    def close(self) -> None:
        self._epoll.close()
        self._watched.clear()
        if self._wake >= 0:
            fd, self._wake = self._wake, -1
            os.close(fd)


class Peer:
    """A connected client socket on the loop: input to ``on_data``, buffered output.

    Closed on EOF, on an error, or when more than ``max_backlog`` bytes wait to be sent
    (a client that stops reading must not make the VMM hold the guest's output forever).
    """

    def __init__(
        self,
        loop: MainLoop,
        sock: _socket.socket,
        on_data: Callable[[Peer, bytes], None],
        on_close: Callable[[Peer], None],
        max_backlog: int = 1 << 20,
        *,
        max_fds: int = 0,
    ) -> None:
        self._loop = loop
        self.sock = sock
        # Open files the client sent (SCM_RIGHTS), oldest first, for a request to take;
        # only where ``max_fds`` allows any (elsewhere the kernel closes what is sent).
        self.fds: list[int] = []
        self._max_fds = max_fds
        self._on_data = on_data
        self._on_close = on_close
        self._max_backlog = max_backlog
        self._out = bytearray()
        self.closed = False
        sock.setblocking(False)
        loop.watch(sock.fileno(), READ, self._ready)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._out:
            try:
                data = data[self.sock.send(data) :]
            except BlockingIOError:
                pass
            except OSError:
                self.close()
                return
        if data:
            self._out += data
            if len(self._out) > self._max_backlog:
                self.close()
                return
            self._loop.watch(self.sock.fileno(), READ | WRITE, self._ready)

    def _ready(self, mask: int) -> None:
        if mask & WRITE:
            self._flush()
        if mask & READ and not self.closed:
            try:
                data = self._receive()
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            self._on_data(self, data)

    def _receive(self) -> bytes:
        if not self._max_fds:
            return self.sock.recv(65536)
        space = _socket.CMSG_SPACE(self._max_fds * 4)
        data, ancillary, _, _ = self.sock.recvmsg(65536, space)
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                got = [int.from_bytes(payload[i : i + 4], "little", signed=True)
                       for i in range(0, len(payload) - len(payload) % 4, 4)]  # fmt: skip
                for fd in got:
                    os.set_inheritable(fd, False)
                self.fds += got
        while len(self.fds) > self._max_fds:  # more than a request can use: not kept
            os.close(self.fds.pop(0))
        return data

    def take_fd(self) -> int | None:
        """The oldest file the client sent, now the caller's to close; None if none."""
        return self.fds.pop(0) if self.fds else None

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        del self._out[:sent]
        if not self._out and not self.closed:
            self._loop.watch(self.sock.fileno(), READ, self._ready)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.unwatch(self.sock.fileno())
        self.sock.close()
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self._on_close(self)


class Listener:
    """Accepts connections on a listening socket and hands each new one to ``on_client``."""

    def __init__(
        self, loop: MainLoop, sock: _socket.socket, on_client: Callable[[_socket.socket], None]
    ) -> None:
        self._loop = loop
        self.sock = sock
        self._on_client = on_client
        sock.setblocking(False)
        loop.watch(sock.fileno(), READ, self._accept)

    def _accept(self, _mask: int) -> None:
        try:
            # socket.py's accept() is this plus a socket object; accept4(SOCK_CLOEXEC) inside
            fd, _ = self.sock._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. EMFILE: keep listening, the client sees a reset
            log.warning("accept on %s failed: %s", self.sock.getsockname(), exc)
            return
        self._on_client(_socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd))

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.unwatch(self.sock.fileno())
        self.sock.close()
