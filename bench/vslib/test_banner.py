"""wait_for_banner against a forwarder that behaves as Debian 12's passt: it accepts at
once, holds a connection until the guest answers its SYN or its SYN timeout ends it, and
(the test's own check) notes every connection the probe hung up on first."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from vslib.banner import HELLO, wait_for_banner
from vslib.measure import cpu_seconds, now, pids_by_comm

SYN_TIMEOUT = 0.5  # passt's is 10 s


class Forwarder:
    """Until ``ready`` (a :func:`now` time) no guest answers: each connection is ended
    after SYN_TIMEOUT, or at once when ``resets`` (a guest up, no sshd yet). From then,
    sshd's banner comes, once the client has sent its identification."""

    def __init__(self, ready: float, resets: bool = False) -> None:
        self.ready = ready
        self.resets = resets
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.hung_up_early = 0  # the client closed before we ended the connection
        self.hellos: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            if now() >= self.ready:
                conn.settimeout(5)
                with self.lock:
                    self.hellos.append(conn.recv(64))
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
                time.sleep(0.2)
                return
            if self.resets:
                return
            conn.settimeout(SYN_TIMEOUT)
            try:  # what passt sees meanwhile: the hello, then maybe a hang-up
                while data := conn.recv(64):
                    assert data == HELLO
                with self.lock:
                    self.hung_up_early += 1
            except TimeoutError:
                pass  # the SYN timeout: we end it

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def forwarders() -> Iterator[list[Forwarder]]:
    made: list[Forwarder] = []
    yield made
    for f in made:
        f.close()


def test_the_banner_is_found_without_hanging_up_first(forwarders: list[Forwarder]) -> None:
    fwd = Forwarder(ready=now() + 1.0)
    forwarders.append(fwd)
    found = wait_for_banner(fwd.port, now() + 10, every=0.1, max_age=30)
    assert fwd.ready <= found < fwd.ready + 0.5  # to about `every`, not to the SYN timeout
    assert fwd.accepted >= 8  # a probe every 0.1 s while the guest did not answer
    assert fwd.hellos and all(h == HELLO for h in fwd.hellos)
    time.sleep(SYN_TIMEOUT + 0.5)  # the probes still open end from the forwarder's side
    assert fwd.hung_up_early == 0


def test_a_guest_that_resets_is_probed_again_at_once(forwarders: list[Forwarder]) -> None:
    fwd = Forwarder(ready=now() + 0.6, resets=True)
    forwarders.append(fwd)
    found = wait_for_banner(fwd.port, now() + 10, every=0.1, max_age=30)
    assert fwd.ready <= found < fwd.ready + 0.5
    assert fwd.hung_up_early == 0


def test_an_old_probe_is_closed_from_our_side_at_max_age(forwarders: list[Forwarder]) -> None:
    fwd = Forwarder(ready=now() + 60)
    forwarders.append(fwd)
    fwd_timeout = SYN_TIMEOUT
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{fwd.port}"):
        wait_for_banner(fwd.port, now() + 1.0, every=0.2, max_age=fwd_timeout / 5)
    assert fwd.hung_up_early > 0  # a forwarder slower than max_age is hung up on


def test_nobody_listening_is_no_error_until_the_deadline() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again: refused from here on
    start = now()
    with pytest.raises(TimeoutError):
        wait_for_banner(port, now() + 0.5, every=0.1)
    assert now() - start >= 0.5


def test_check_ends_the_wait(forwarders: list[Forwarder]) -> None:
    fwd = Forwarder(ready=now() + 60, resets=True)
    forwarders.append(fwd)

    def gone() -> None:
        raise RuntimeError("VM is shutoff")

    with pytest.raises(RuntimeError, match="shutoff"):
        wait_for_banner(fwd.port, now() + 10, every=0.1, check=gone, check_every=0.3)


@pytest.mark.skipif(not shutil.which("passt"), reason="no passt (apt install passt)")
def test_the_probes_leave_a_real_passt_idle() -> None:
    """Against Debian's passt with no guest behind it: the probes of a 3 s wait, each
    ended by passt's 10 s SYN timeout, cost it almost no CPU. (One probe hung up on
    early costs it about 8 CPU-seconds; see vslib/banner.py.)"""
    from qumran.vmm.devices.virtio.passt_link import PasstLink, PasstSpec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = set(pids_of("passt"))
    link = PasstLink.start_passt(PasstSpec.parse(f"passt,forward=tcp:127.0.0.1:{port}-:22"))
    try:
        [pid] = set(pids_of("passt")) - before
        threading.Thread(target=drain, args=(link.sock,), daemon=True).start()
        start = cpu_seconds([pid])
        with pytest.raises(TimeoutError):
            wait_for_banner(port, now() + 3, every=0.5)
        time.sleep(11)  # the last probe's SYN timeout has passed
        assert cpu_seconds([pid]) - start < 1.5
    finally:
        link.close()


def pids_of(name: str) -> list[int]:
    """Debian's passt runs as passt.avx2 where the CPU has AVX2."""
    return pids_by_comm(name) + pids_by_comm(f"{name}.avx2")


def drain(sock: socket.socket) -> None:
    """Read and drop what passt sends the guest (its SYNs), as a guest not yet up."""
    with contextlib.suppress(OSError):
        while sock.recv(1 << 16):
            pass
