"""qumrand restarting in place, and sockets handed to it (sd_listen_fds).

A restart (SIGHUP, `qumran daemon restart`) re-executes qumrand holding its listening
socket, so a client meanwhile waits in the backlog instead of being refused, and the VMs
keep running and are re-attached. systemd's socket unit hands the socket over the same
way (tried here with systemd-socket-activate, systemd's own tool for it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import Daemon
from qumran.client import Client

QUMRAN = [sys.executable, "-m", "qumran.cli.main"]


def qumran(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QUMRAN, *args], env=daemon.env, capture_output=True, text=True, timeout=120
    )


class Loop(threading.Thread):
    """Calls `list` over and over until told to stop, keeping every failure and the time
    each call began."""

    def __init__(self, call: Any) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.failures: list[str] = []
        self.started: list[float] = []
        self.first = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.started.append(time.monotonic())
            try:
                failure = self.call()
            except Exception as exc:
                failure = repr(exc)
            if failure:
                self.failures.append(failure)
            self.first.set()

    def calls_between(self, begin: float, end: float) -> int:
        return sum(begin <= t <= end for t in self.started)


def test_clients_are_never_refused_during_a_restart(fake_daemon: Daemon) -> None:
    fake_daemon.call("POST", "/v1/vms", json={"name": "a", "memory": 64,
                                              "boot": {"kernel": "/bin/sh"}})  # fmt: skip
    vm = fake_daemon.call("POST", "/v1/vms/a/start").json()
    before = fake_daemon.call("GET", "/v1/daemon").json()

    def cli() -> str:
        proc = qumran(fake_daemon, "list")
        return "" if proc.returncode == 0 and " a " in proc.stdout else proc.stderr

    def api() -> str:
        names = [v["name"] for v in Client(fake_daemon.socket).list_vms()]
        return "" if names == ["a"] else f"listed {names}"

    def other() -> str:  # not a list: held by a starting qumrand for its full server
        got = Client(fake_daemon.socket).get_vm("a")
        return "" if (got["state"], got["pid"]) == ("running", vm["pid"]) else repr(got)

    loops = [Loop(cli), Loop(cli), Loop(api), Loop(api), Loop(other)]
    for loop in loops:
        loop.start()
    for loop in loops:
        assert loop.first.wait(60)
    begin = time.monotonic()
    restart = qumran(fake_daemon, "daemon", "restart")
    end = time.monotonic()
    after = {len(loop.started) for loop in loops}
    for loop in loops:  # and a few calls to the new daemon
        while len(loop.started) < min(after) + 3:
            time.sleep(0.01)
        loop.done.set()
        loop.join(60)

    assert restart.returncode == 0, restart.stderr
    assert restart.stdout.startswith(f"qumrand restarted (pid {before['pid']})")
    for loop in loops:
        assert loop.failures == []
    # The loops really ran across the restart: the in-process ones many times.
    assert all(loop.calls_between(begin, end) >= 5 for loop in loops[2:])
    # The new qumrand answered lists before its full API had loaded (daemon/early.py).
    assert "list request(s) while starting" in fake_daemon.log.read_text()
    now = fake_daemon.call("GET", "/v1/daemon").json()
    assert now["pid"] == before["pid"] and now["started_at"] > before["started_at"]
    assert fake_daemon.proc is not None and fake_daemon.proc.poll() is None
    again = fake_daemon.vm("a")
    assert (again["state"], again["pid"]) == ("running", vm["pid"])  # re-attached
    log = fake_daemon.log.read_text()
    assert log.count("qumrand listening on") == 2
    assert "Traceback" not in log


def test_stop_status_and_a_restarts_log(fake_daemon: Daemon) -> None:
    status = qumran(fake_daemon, "daemon", "status")
    assert status.returncode == 0, status.stderr
    assert f"Socket:         {fake_daemon.socket}\n" in status.stdout
    assert "off (turn it on in the settings file: [web] enabled = true)" in status.stdout
    assert fake_daemon.proc is not None
    before = fake_daemon.call("GET", "/v1/daemon").json()
    os.kill(fake_daemon.proc.pid, signal.SIGHUP)  # a restart by hand, as an admin would
    while fake_daemon.call("GET", "/v1/daemon").json()["started_at"] == before["started_at"]:
        time.sleep(0.02)
    stop = qumran(fake_daemon, "daemon", "stop")
    assert stop.returncode == 0, stop.stderr
    assert fake_daemon.proc.wait(5) == 0
    fake_daemon.proc = None
    assert not os.path.exists(fake_daemon.socket)  # it bound it: it unlinks it
    status = qumran(fake_daemon, "daemon", "status")
    assert status.returncode == 3
    assert status.stdout == f"qumrand is not running: nothing listens on {fake_daemon.socket}\n"


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="needs systemd-socket-activate (the systemd package)")  # fmt: skip
def test_a_socket_passed_as_systemd_does(daemon_root: Path) -> None:
    path = daemon_root / "activated.sock"
    argv = [
        "systemd-socket-activate", "-l", str(path),
        *(["-E", "PYTHONPATH"] if "PYTHONPATH" in os.environ else []),
        sys.executable, "-m", "qumran.daemon.main", "--no-config", "--driver", "fake",
        "--state-dir", str(daemon_root / "state"), "--run-dir", str(daemon_root / "run"),
        "--socket", str(daemon_root / "not-this.sock"),
    ]  # fmt: skip
    with open(daemon_root / "log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not path.exists():  # systemd-socket-activate's own bind
            assert proc.poll() is None, (daemon_root / "log").read_text()
            time.sleep(0.01)
        client = Client(str(path), timeout=30)
        info = client.daemon()  # this first connection starts qumrand, which answers it
        assert info["socket"] == str(path) and info["socket_source"] == "systemd"
        assert info["pid"] == proc.pid  # exec'd in place, as LISTEN_PID says
        assert not (daemon_root / "not-this.sock").exists()
        os.kill(proc.pid, signal.SIGHUP)
        while (now := client.daemon())["started_at"] == info["started_at"]:
            time.sleep(0.02)
        assert now["socket_source"] == "systemd"  # still the socket unit's, after a restart
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
        assert path.exists()  # the socket unit's to remove, not qumrand's
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in (daemon_root / "log").read_text()


def test_a_passed_fd_that_is_no_listening_socket_is_one_line(daemon_root: Path) -> None:
    script = (
        "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.environ['LISTEN_FDS'] = '1'; "
        "fd = os.open('/dev/null', os.O_RDONLY); os.dup2(fd, 3); "
        "from qumran.daemon.main import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "--no-config", "--driver", "fake",
         "--state-dir", str(daemon_root / "s"), "--run-dir", str(daemon_root / "r")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("qumrand: the socket passed as fd 3 (api) cannot be used: ")
    assert proc.stderr.count("\n") == 1


def test_a_vm_started_before_a_restart_in_place_is_reaped_when_it_dies(
    fake_daemon: Daemon,
) -> None:
    """After an exec, qumrand is still the parent of the VMs it started before, without
    their Popen objects: one that dies must not stay a zombie, and its exit status (here
    the signal that killed it) is still known."""
    fake_daemon.call("POST", "/v1/vms", json={"name": "z", "memory": 64,
                                              "boot": {"kernel": "/bin/sh"}})  # fmt: skip
    pid = fake_daemon.call("POST", "/v1/vms/z/start").json()["pid"]
    restart = qumran(fake_daemon, "daemon", "restart")
    assert restart.returncode == 0, restart.stderr
    assert fake_daemon.vm("z")["pid"] == pid  # re-attached, still our child
    assert fake_daemon.proc is not None
    assert _parent_of(pid) == fake_daemon.proc.pid

    os.kill(pid, signal.SIGKILL)
    info = fake_daemon.wait_state("z", "shutoff", timeout=10)

    assert info["reason"] == "killed"
    assert not Path(f"/proc/{pid}").exists(), f"pid {pid} left a zombie: {_stat(pid)}"
    events = fake_daemon.call("GET", "/v1/events").json()
    stopped = [e for e in events if e["vm"] == "z" and e["event"] == "stopped"]
    assert stopped[-1]["detail"] == "the process was killed by SIGKILL", stopped


def _stat(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        return str(exc)


def _parent_of(pid: int) -> int:
    return int(_stat(pid).rsplit(")", 1)[1].split()[1])
