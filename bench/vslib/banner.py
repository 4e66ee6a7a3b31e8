"""Waiting for a guest's SSH banner through a user-mode forward, without making the
forwarder spin.

Debian 12's passt (0.0~git20230309) spins on a forwarded connection that the host side
closes before the guest has answered the SYN passt sent it: epoll reports EPOLLRDHUP on
that socket again and again, and passt takes all of a CPU until its SYN timeout (10 s)
ends the connection. One early hang-up costs about 8 CPU-seconds. A probe that connected,
waited 5 s for the banner and hung up, once a second, kept passt spinning through a whole
Debian boot under qumran-vmm: about 51 s of the KVM test host's one CPU a boot, taken from
the guest being timed.

So the probe never hangs up first. It opens a new connection every ``every`` seconds (the
banner's resolution) and keeps each until the far side ends it: at once when the guest
answers the SYN with a reset (up, sshd not yet listening), after its SYN timeout when the
guest never answered (passt: 10 s, and no retransmit). Only one older than ``max_age`` is
closed from our side (QEMU's slirp retries a SYN for longer; it does not spin). The
connections still open when the banner comes are left to end the same way, in a thread.
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
from collections.abc import Callable

from vslib.measure import now

HELLO = b"SSH-2.0-qumran-bench\r\n"


def wait_for_banner(
    port: int,
    deadline: float,
    *,
    every: float = 1.0,
    max_age: float = 20.0,
    check: Callable[[], None] = lambda: None,
    check_every: float = 10.0,
) -> float:
    """When an SSH banner first came through ``127.0.0.1:port`` (:func:`now`);
    TimeoutError at ``deadline``. ``check`` is called every ``check_every`` seconds and
    may raise to end the wait (a VM that is gone never answers)."""
    probes = _Probes(port, max_age)
    checked = opened = now()
    probes.open()
    try:
        while (t := now()) < deadline:
            if t - opened >= every:
                opened = t
                probes.open()
            if t - checked >= check_every:
                checked = t
                check()
            found = probes.poll(min(every - (t - opened), deadline - t, 0.5))
            if found is not None:
                return found
        raise TimeoutError(f"no SSH banner on 127.0.0.1:{port} in time")
    finally:
        probes.linger()


class _Probes:
    """The open probe connections: each identifies itself as an SSH client (Debian 12's
    passt passes nothing the guest sends first until the host side has sent something)
    and waits for the banner or for the far side to end it."""

    def __init__(self, port: int, max_age: float) -> None:
        self.port = port
        self.max_age = max_age
        self.sel = selectors.DefaultSelector()
        self.opened: dict[socket.socket, float] = {}

    def open(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", self.port))
        if err not in (0, errno.EINPROGRESS):
            s.close()  # refused: nobody forwards yet, so nothing to spin on
            return
        self.opened[s] = now()
        self.sel.register(s, selectors.EVENT_WRITE)

    def poll(self, timeout: float) -> float | None:
        for key, events in self.sel.select(max(timeout, 0.0)):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if events & selectors.EVENT_WRITE:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._drop(s)  # refused: as above
                    continue
                try:
                    s.send(HELLO)
                except OSError:
                    self._drop(s)
                    continue
                self.sel.modify(s, selectors.EVENT_READ)
                continue
            try:
                data = s.recv(64)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data.startswith(b"SSH-"):
                return now()
            self._drop(s)  # ended by the far side (or not SSH): the next probe goes on
        t = now()
        for s in [s for s, at in self.opened.items() if t - at > self.max_age]:
            self._drop(s)
        return None

    def _drop(self, s: socket.socket) -> None:
        self.sel.unregister(s)
        del self.opened[s]
        s.close()

    def linger(self) -> None:
        """Leave the open probes to end from the far side (or at ``max_age``), in a
        thread: hanging up on them now would make passt spin."""
        if not self.opened:
            self.sel.close()
            return

        def wait() -> None:
            while self.opened:
                self.poll(0.5)
            self.sel.close()

        threading.Thread(target=wait, name="banner-probes", daemon=True).start()
