"""The device I/O loop: one thread that waits on eventfds and TAP fds and runs devices.

Guest kicks arrive as eventfd signals (KVM writes them through ioeventfd without leaving
the kernel), so a kick never runs device code on a vCPU thread. Disk I/O is blocking
(preadv/pwritev), which is why this is its own thread and not the asyncio loop that serves
the control socket: a slow disk must not stall the control socket, and the loop must run
before asyncio is even imported (qumran-vmm starts the guest first).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
from collections.abc import Callable

from qumran.vmm.log import get_logger
from qumran.vmm.proctitle import set_thread_name

log = get_logger(__name__)


class IoLoop:
    def __init__(self, name: str = "virtio-io") -> None:
        self._sel = selectors.DefaultSelector()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel.register(self._wake, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._stopping = False
        self._calls: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        with self._lock:
            try:
                self._sel.register(fd, selectors.EVENT_READ, callback)
            except KeyError:
                self._sel.modify(fd, selectors.EVENT_READ, callback)
        self._poke()

    def remove_reader(self, fd: int) -> None:
        with self._lock, contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(fd)

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop thread (thread-safe)."""
        with self._lock:
            self._calls.append(callback)
        self._poke()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._poke()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        self._sel.close()
        if self._wake >= 0:
            fd, self._wake = self._wake, -1
            os.close(fd)

    def _poke(self) -> None:
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)

    def _run(self) -> None:
        set_thread_name("virtio-io")
        while True:
            events = self._sel.select()
            with self._lock:
                if self._stopping:
                    return
                calls, self._calls = self._calls, []
            for call in calls:
                self._guard(call)
            for key, _ in events:
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wake)
                else:
                    self._guard(key.data)

    @staticmethod
    def _guard(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:  # a device bug must not stop every other device
            log.exception("device I/O callback failed")
