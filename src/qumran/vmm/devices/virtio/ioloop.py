"""The device I/O loop: one thread that waits on eventfds and TAP fds and runs devices.

Guest kicks arrive as eventfd signals (KVM writes them through ioeventfd without leaving
the kernel), so a kick never runs device code on a vCPU thread. Disk I/O is blocking
(preadv/pwritev), which is why this is its own thread and not the main loop that serves
the control socket: a slow disk must not stall the control socket.

This loop is on the path of every request a guest makes one at a time (a 4 KiB read at
queue depth 1 costs a few microseconds of Python in all), so it is plain ``epoll`` and a
dict of callbacks, with no lock taken unless another thread handed it work.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable

from qumran.vmm import confine
from qumran.vmm.log import get_logger
from qumran.vmm.proctitle import set_thread_name

log = get_logger(__name__)


class IoLoop:
    def __init__(self, name: str = "virtio-io") -> None:
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._readers: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._calls: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        with self._lock:
            if fd not in self._readers:
                self._epoll.register(fd, select.EPOLLIN)
            self._readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        with self._lock:
            if self._readers.pop(fd, None) is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(fd)

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop thread (thread-safe)."""
        with self._lock:
            self._calls.append(callback)
        self._poke()

    def park(self, timeout: float = 5.0) -> Callable[[], None]:
        """Hold the loop thread between two callbacks (no device runs) until the returned
        function is called: a snapshot reads the devices' state meanwhile. TimeoutError
        if the thread does not get there in ``timeout`` seconds (a device stuck in I/O)."""
        if not self._thread.is_alive():
            return lambda: None
        parked, release = threading.Event(), threading.Event()

        def hold() -> None:
            parked.set()
            release.wait()

        self.call_soon(hold)
        if not parked.wait(timeout):
            release.set()
            raise TimeoutError(f"the device I/O thread did not stop within {timeout}s")
        return release.set

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._poke()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        self._epoll.close()
        if self._wake >= 0:
            fd, self._wake = self._wake, -1
            os.close(fd)

    def _poke(self) -> None:
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)

    def _run(self) -> None:
        set_thread_name("virtio-io")
        confine.enter("io")
        poll, readers, wake = self._epoll.poll, self._readers, self._wake
        while True:
            for fd, _ in poll():
                if fd == wake:
                    if not self._woken():
                        return
                    continue
                # A reader removed by an earlier callback of this round is skipped.
                callback = readers.get(fd)
                if callback is None:
                    continue
                try:
                    callback()
                except Exception:  # a device bug must not stop every other device
                    log.exception("device I/O callback failed")

    def _woken(self) -> bool:
        """Run the calls handed over by other threads; False once the loop must stop."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._wake)
        with self._lock:
            if self._stopping:
                return False
            calls, self._calls = self._calls, []
        for call in calls:
            try:
                call()
            except Exception:
                log.exception("device I/O callback failed")
        return True
