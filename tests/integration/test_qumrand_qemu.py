"""The whole path, for real: qumran CLI -> qumrand -> QEMU (TCG) -> the demo guest.

One daemon and one demo VM for the module (a TCG boot takes seconds); the tests run in
file order, each leaving the VM as the next one expects, like a user at a terminal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir
from qumran.images.demo import READY_LINE, build_demo

pytestmark = pytest.mark.integration

QUMRAN = str(Path(sys.executable).parent / "qumran")
BOOT_TIMEOUT = 90


@pytest.fixture(scope="module")
def qemu_daemon() -> Iterator[Daemon]:
    root = short_tmpdir()
    daemon = Daemon(root, driver="real")
    daemon.start()
    yield daemon
    daemon.cleanup()
    remove_tmpdir(root)


def qumran(daemon: Daemon, *args: str, stdin: str = "", timeout: float = 120) -> Any:
    proc = subprocess.run(
        [QUMRAN, *args], input=stdin, capture_output=True, text=True,
        env=daemon.env, timeout=timeout,
    )  # fmt: skip
    return proc


def qumran_json(daemon: Daemon, *args: str) -> Any:
    proc = qumran(daemon, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def console_until(
    daemon: Daemon, text: str, keys: str = "", timeout: int = BOOT_TIMEOUT, history: bool = False
) -> str:
    """`qumran console --until`: ``text`` must come after the console was attached."""
    proc = qumran(
        daemon, "console", "demo", "--until", text, "--timeout", str(timeout),
        *(["--history"] if history else []), stdin=keys, timeout=timeout + 30,
    )  # fmt: skip
    assert proc.returncode == 0, f"{text!r} not seen: {proc.stderr}\n{proc.stdout[-2000:]}"
    return str(proc.stdout)


def test_define_the_demo_vm(qemu_daemon: Daemon) -> None:
    image = build_demo()
    definition = image.kernel.parent / "demo.yaml"
    info = qumran_json(qemu_daemon, "define", str(definition))
    assert (info["name"], info["state"]) == ("demo", "shutoff")
    # The same name again is refused, and the definition is untouched.
    proc = qumran(qemu_daemon, "define", str(definition))
    assert proc.returncode == 1 and "already exists" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_start_boots_to_the_ready_line(qemu_daemon: Daemon) -> None:
    proc = qumran(
        qemu_daemon, "start", "demo", "--console", "--until", READY_LINE,
        "--timeout", str(BOOT_TIMEOUT), timeout=BOOT_TIMEOUT + 30,
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stderr}\n{proc.stdout[-2000:]}"
    info = qemu_daemon.vm("demo")
    assert info["state"] == "running"
    cmdline = Path(f"/proc/{info['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"guest=demo,process=qumran-demo,debug-threads=on" in cmdline


def test_starting_a_running_vm_is_refused(qemu_daemon: Daemon) -> None:
    proc = qumran(qemu_daemon, "start", "demo")
    assert proc.returncode == 1 and "already running" in proc.stderr


def test_the_console_answers_a_command(qemu_daemon: Daemon) -> None:
    out = console_until(qemu_daemon, "hello-42", keys="echo hello-$((6*7))\n", timeout=30)
    assert "hello-42" in out


def test_a_late_viewer_sees_recent_output(qemu_daemon: Daemon) -> None:
    proc = qumran(qemu_daemon, "console", "demo", "--history", "--timeout", "2")
    assert proc.returncode == 0, proc.stderr
    assert READY_LINE in proc.stdout


def test_sigstop_and_sigcont_of_the_qemu_process(qemu_daemon: Daemon) -> None:
    pid = qemu_daemon.vm("demo")["pid"]
    os.kill(pid, signal.SIGSTOP)
    assert qemu_daemon.wait_state("demo", "paused", timeout=1.0)["reason"] == "signal"
    os.kill(pid, signal.SIGCONT)
    qemu_daemon.wait_state("demo", "running", timeout=1.0)


def test_suspend_and_resume_through_the_monitor(qemu_daemon: Daemon) -> None:
    assert qumran_json(qemu_daemon, "suspend", "demo")["state"] == "paused"
    assert qumran(qemu_daemon, "domstate", "demo").stdout.strip() == "paused"
    assert qumran_json(qemu_daemon, "resume", "demo")["state"] == "running"
    console_until(qemu_daemon, "alive-7", keys="echo alive-$((3+4))\n", timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["graceful", "kill-9"])
def test_daemon_restart_reattaches(qemu_daemon: Daemon, sig: int) -> None:
    pid = qemu_daemon.vm("demo")["pid"]
    qemu_daemon.restart(sig)
    info = qemu_daemon.vm("demo")
    assert (info["state"], info["pid"], info["reason"]) == ("running", pid, "daemon-restart")
    out = console_until(
        qemu_daemon, "back-9", keys="echo back-$((4+5))\n", timeout=30, history=True
    )
    assert READY_LINE in out  # the history survived the restart (from the console log)


def ready_lines_logged(daemon: Daemon) -> int:
    """How often the guest printed its ready line, from the console log in the run dir."""
    uuid = daemon.vm("demo")["uuid"]
    log = daemon.root / "run" / "vms" / uuid[:13] / "console.log"
    return log.read_text(errors="replace").count(READY_LINE)


@pytest.mark.parametrize(
    ("verb", "first", "guest_resets"),
    [
        # Ctrl-Alt-Del: the demo's init leaves it to the kernel, which restarts the machine
        # itself; QEMU reports that reset as the guest's.
        ("reboot", ("reboot-requested", "user"), True),
        ("reset", ("rebooted", "user"), False),  # the reset button
    ],
)
def test_reboot_and_reset_come_back(
    qemu_daemon: Daemon, verb: str, first: tuple[str, str], guest_resets: bool
) -> None:
    pid = qemu_daemon.vm("demo")["pid"]
    before = ready_lines_logged(qemu_daemon)
    last_event = qumran_json(qemu_daemon, "events")[-1]["id"]
    qumran_json(qemu_daemon, verb, "demo")
    deadline = time.monotonic() + BOOT_TIMEOUT
    while ready_lines_logged(qemu_daemon) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ready_lines_logged(qemu_daemon) == before + 1
    assert qemu_daemon.vm("demo")["pid"] == pid  # the same process, a reset guest
    seen = qumran_json(qemu_daemon, "events")
    new = [(e["event"], e["reason"]) for e in seen if e["id"] > last_event]
    assert new[0] == first
    # A restarting kernel tries reset methods in turn (ACPI, keyboard controller) and QEMU
    # may act on more than one; the firmware, run again, resets the machine once more by
    # itself. All of those are the guest's resets, reported as they happen.
    assert set(new[1:]) <= {("reset", "guest")}
    assert bool(new[1:]) or not guest_resets


def test_graceful_shutdown_through_the_guest(qemu_daemon: Daemon) -> None:
    time.sleep(2)  # the ready line is printed just before acpid starts
    qumran_json(qemu_daemon, "shutdown", "demo")
    info = qemu_daemon.wait_state("demo", "shutoff", timeout=60)
    assert info["reason"] == "shutdown"
    events = [e["event"] for e in qumran_json(qemu_daemon, "events") if e["vm"] == "demo"]
    assert events[-2:] == ["shutdown", "stopped"]


def test_kill_9_of_qemu_shows_killed(qemu_daemon: Daemon) -> None:
    pid = qumran_json(qemu_daemon, "start", "demo")["pid"]
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    info = qemu_daemon.wait_state("demo", "shutoff", timeout=1.0)
    assert info["reason"] == "killed" and time.monotonic() - started < 1.0


def test_destroying_a_stopped_vm_is_refused(qemu_daemon: Daemon) -> None:
    proc = qumran(qemu_daemon, "destroy", "demo")
    assert proc.returncode == 1 and "not running" in proc.stderr


def test_qemu_errors_reach_the_user(qemu_daemon: Daemon, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus-kernel"
    bogus.write_bytes(b"this is not a kernel")
    definition = tmp_path / "bad.yaml"
    definition.write_text(f"name: bad\nmemory: 64\nboot: {{kernel: {bogus}}}\n")
    qumran_json(qemu_daemon, "define", str(definition))
    proc = qumran(qemu_daemon, "start", "bad")
    assert proc.returncode == 1
    assert "qemu: invalid kernel header" in proc.stderr, proc.stderr  # QEMU's own words
    assert qemu_daemon.vm("bad")["state"] == "shutoff"
    assert qemu_daemon.vm("demo")["state"] == "shutoff"  # nothing else touched
