"""libvirt-sock across a qumrand restart in place (SIGHUP, `qumran daemon restart`): the
same listening socket is handed on with the API's, so a libvirt client connecting
meanwhile waits in the backlog for the new qumrand instead of being refused; and a call
the old qumrand has accepted is answered before it goes, never reset."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading

from daemon_harness import Daemon
from libvirt_clients import ok

AUTH_LIST = struct.pack(">IIiiIi", 0x20008086, 1, 66, 0, 1, 0)  # REMOTE_PROC_AUTH_LIST, a call


def auth_list(path: str) -> str:
    """One connection, one call answered: '' or what went wrong."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        try:
            sock.connect(path)
        except OSError as exc:
            return f"connect: {exc}"
        try:
            sock.sendall(struct.pack(">I", 4 + len(AUTH_LIST)) + AUTH_LIST)
            word = sock.recv(4, socket.MSG_WAITALL)
        except OSError as exc:
            return f"call: {exc}"
        if len(word) < 4:
            return "closed before the answer"
        return ""


def test_the_libvirt_socket_is_kept_across_a_restart(fake_daemon: Daemon) -> None:
    path = str(fake_daemon.root / "libvirt-sock")
    before = os.stat(path).st_ino
    failures: list[str] = []
    answered = [0]
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            failure = auth_list(path)
            if failure:
                failures.append(failure)
            else:
                answered[0] += 1

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    restart = subprocess.run([sys.executable, "-m", "qumran.cli.main", "daemon", "restart"],
                             env=fake_daemon.env, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    calls = answered[0]
    while answered[0] < calls + 3:  # a few answers from the new qumrand
        assert thread.is_alive()
        done.wait(0.01)
    done.set()
    thread.join(60)
    assert restart.returncode == 0, restart.stderr
    assert failures == []  # never refused, never reset, never closed unanswered
    assert os.stat(path).st_ino == before  # the same socket, not a new one bound after
    assert "libvirt protocol on" in fake_daemon.log.read_text().split("restarting in place")[-1]
    assert ok(fake_daemon, "list", "--all") is not None  # virsh, on the new qumrand
