"""`qumran`, the real process, against a real qumrand running the fake driver.

The fake driver's stand-in VM is a real process with a console that prints
``FAKE-VM READY`` at boot and echoes its input, so the console is tested end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import Daemon

READY = "FAKE-VM READY"


def qumran(
    daemon: Daemon, *argv: str, stdin: bytes = b"", timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "qumran.cli.main", *argv],
        input=stdin.decode("latin-1"), capture_output=True, text=True,
        env=daemon.env, timeout=timeout, check=False,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def ok(daemon: Daemon, *argv: str, stdin: bytes = b"") -> str:
    proc = qumran(daemon, *argv, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def define(daemon: Daemon, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nmemory: 64M\nboot:\n  kernel: /bin/sh\n")
    assert ok(daemon, "define", str(path)) == f"VM '{name}' defined from {path}\n"


def as_json(daemon: Daemon, *argv: str) -> Any:
    return json.loads(ok(daemon, "--json", *argv))


def test_a_vms_life_through_the_cli(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, tmp_path, "web")
    assert ok(fake_daemon, "list").splitlines()[2:] == []
    assert ok(fake_daemon, "list", "--all").splitlines()[2] == " -    web    shut off"
    assert ok(fake_daemon, "start", "web") == "VM 'web' started\n"
    pid = as_json(fake_daemon, "dominfo", "web")["pid"]
    assert f" {pid}   web    running" in ok(fake_daemon, "list")
    assert f"PID:            {pid}\n" in ok(fake_daemon, "dominfo", "web")
    ok(fake_daemon, "suspend", "web")
    assert ok(fake_daemon, "domstate", "web") == "paused\n"
    ok(fake_daemon, "resume", "web")
    assert ok(fake_daemon, "domstate", "web") == "running\n"
    assert ok(fake_daemon, "destroy", "web") == "VM 'web' destroyed\n"
    assert ok(fake_daemon, "domstate", "web") == "shut off\n"
    assert ok(fake_daemon, "autostart", "web") == "VM 'web' marked as autostarted\n"
    assert "Autostart:      enable\n" in ok(fake_daemon, "dominfo", "web")
    assert ok(fake_daemon, "undefine", "web") == "VM 'web' undefined\n"
    assert as_json(fake_daemon, "list", "--all") == []
    events = [e["event"] for e in as_json(fake_daemon, "events")]
    assert events[0] == "defined" and "started" in events


def test_errors_from_the_daemon(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, tmp_path, "web")
    again = qumran(fake_daemon, "define", str(tmp_path / "web.yaml"))
    assert again.returncode == 1
    assert again.stderr.startswith("error: ") and again.stderr.count("\n") == 1
    missing = qumran(fake_daemon, "start", "nope")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert "nope" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmemory: lots\nboot:\n  kernel: /bin/sh\n")
    invalid = qumran(fake_daemon, "define", str(bad))
    assert invalid.returncode == 1 and "memory" in invalid.stderr


def test_host(fake_daemon: Daemon) -> None:
    info = as_json(fake_daemon, "host")
    assert info["drivers"]
    assert "Hostname:" in ok(fake_daemon, "host")


def test_start_console_until_the_ready_line(fake_daemon: Daemon, tmp_path: Path) -> None:
    # A script's way to wait for a boot: stdin a pipe (at EOF), bounded by --until.
    define(fake_daemon, tmp_path, "c1")
    proc = qumran(fake_daemon, "start", "c1", "--console", "--until", READY, "--timeout", "20")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("VM 'c1' started\n") and READY in proc.stdout
    assert proc.stderr == "Connected to c1 (escape character is ^])\n"


def test_start_console_with_a_pipe_ends_at_its_timeout(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, tmp_path, "c5")
    started = time.monotonic()
    proc = qumran(fake_daemon, "start", "c5", "--console", "--timeout", "0.5", timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert 0.5 <= time.monotonic() - started < 15
    assert READY in proc.stdout  # what the guest printed since the start is shown


def test_start_until_needs_the_console(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, tmp_path, "c6")
    proc = qumran(fake_daemon, "start", "c6", "--until", READY)
    assert proc.returncode == 1 and proc.stderr == (
        "error: --until and --timeout wait on the console: add --console\n"
    )
    assert ok(fake_daemon, "domstate", "c6") == "shut off\n"  # refused before starting it


def test_console_until_waits_for_output_after_the_command(
    fake_daemon: Daemon, tmp_path: Path
) -> None:
    """After a reboot, the previous boot's ready line is history: --until waits for the next."""
    define(fake_daemon, tmp_path, "rb")
    ok(fake_daemon, "start", "rb", "--console", "--until", READY, "--timeout", "20")
    # The guest reboots when sent "reboot": its ready line comes again, after the echo.
    proc = qumran(
        fake_daemon, "console", "rb", "--until", READY, "--timeout", "20", stdin=b"reboot\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(READY) == 1
    assert proc.stdout.index("reboot") < proc.stdout.index(READY)
    # Nothing new is printed now: two ready lines in the history, and --until times out.
    quiet = qumran(fake_daemon, "console", "rb", "--until", READY, "--timeout", "0.5")
    assert quiet.returncode == 1 and "did not print 'FAKE-VM READY' in 0.5s" in quiet.stderr
    assert READY not in quiet.stdout
    # --history shows them, and still does not match them.
    shown = qumran(fake_daemon, "console", "rb", "--history", "--until", READY, "--timeout", "0.5")
    assert shown.returncode == 1 and "did not print" in shown.stderr
    assert shown.stdout.count(READY) == 2 and "reboot" in shown.stdout


def test_console_until_fails_when_the_vm_stops_first(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, tmp_path, "down")
    ok(fake_daemon, "start", "down")
    proc = qumran(
        fake_daemon, "console", "down", "--until", "never printed", "--timeout", "20",
        stdin=b"poweroff\n",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "console closed (the VM stopped) before it printed 'never printed'" in proc.stderr


def test_console_keys_from_a_pipe_are_echoed(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, tmp_path, "c2")
    ok(fake_daemon, "start", "c2")
    proc = qumran(
        fake_daemon, "console", "c2", "--until", "xyzzy-42", "--timeout", "20",
        stdin=b"echo xyzzy-42\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "xyzzy-42" in proc.stdout


def test_console_escape_leaves_at_once(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, tmp_path, "c3")
    proc = qumran(fake_daemon, "start", "c3", "--console", stdin=b"\x1d", timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("VM 'c3' started\n")


def test_console_timeout_waiting_for_text_is_an_error(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, tmp_path, "c4")
    ok(fake_daemon, "start", "c4")
    proc = qumran(fake_daemon, "console", "c4", "--until", "never printed", "--timeout", "0.5")
    assert proc.returncode == 1
    assert "did not print 'never printed'" in proc.stderr


@pytest.mark.parametrize(("name", "complaint"), [("idle", "not running"), ("ghost", "ghost")])
def test_console_refused(fake_daemon: Daemon, tmp_path: Path, name: str, complaint: str) -> None:
    define(fake_daemon, tmp_path, "idle")
    proc = qumran(fake_daemon, "console", name)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and complaint in proc.stderr


def test_domstats(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, tmp_path, "stats")
    ok(fake_daemon, "start", "stats")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = ok(fake_daemon, "domstats", "stats")
        if "cpu.percent=" in out:
            break
        time.sleep(0.5)
    assert "Domain: 'stats'" in out and "memory.rss=" in out and "net.rx=-" in out
    samples = as_json(fake_daemon, "domstats", "stats")["samples"]
    assert samples and samples[-1]["rss_bytes"] > 0


def test_the_console_routes_history_modes(fake_daemon: Daemon, tmp_path: Path) -> None:
    """?history=separate: the recent output alone, first; none: only new output;
    without it (older clients, the browser): one undivided stream."""
    from websockets.sync.client import unix_connect

    define(fake_daemon, tmp_path, "hm")
    ok(fake_daemon, "start", "hm", "--console", "--until", READY, "--timeout", "20")
    uri = "ws://localhost/v1/vms/hm/console"
    with unix_connect(fake_daemon.socket, uri + "?history=separate") as ws:
        assert READY.encode() in ws.recv(timeout=10)
        ws.send(b"live-1\n")
        assert ws.recv(timeout=10) == b"live-1\n"  # the echo, not the history again
    with unix_connect(fake_daemon.socket, uri + "?history=none") as ws:
        ws.send(b"live-2\n")
        assert ws.recv(timeout=10) == b"live-2\n"
    with unix_connect(fake_daemon.socket, uri) as ws:
        assert READY.encode() in ws.recv(timeout=10)
    bad = fake_daemon.call("GET", "/v1/vms/hm/console?history=all", headers=_UPGRADE)
    assert bad.status_code == 400
    assert "history='all' is not a console history mode" in bad.json()["error"]["message"]


_UPGRADE = {
    "connection": "upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
}  # fmt: skip


def test_native_on_a_host_without_hardware_kvm_is_refused_at_define(
    daemon_root: Path, tmp_path: Path
) -> None:
    """qumrand with its real drivers: `define` says this host cannot run qumran-vmm, and why."""
    from qumran.drivers.qemu.accel import choose_accel

    if choose_accel().accel == "kvm":
        pytest.skip("this host has hardware KVM: qumran-vmm runs here (the kvm tier boots it)")
    daemon = Daemon(daemon_root, driver="real")
    daemon.start()
    try:
        path = tmp_path / "n.yaml"
        path.write_text("name: n\nmemory: 64M\nhypervisor: native\nboot:\n  kernel: /bin/sh\n")
        proc = qumran(daemon, "define", str(path))
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1
        assert proc.stderr.startswith("error: hypervisor: native cannot run on this host: ")
        assert "needs a hardware KVM" in proc.stderr and "use hypervisor: qemu" in proc.stderr
        assert "--force-kvm" not in proc.stderr
        assert as_json(daemon, "list", "--all") == []
    finally:
        daemon.cleanup()


@pytest.mark.parametrize(
    ("memory", "answer"),
    [
        ("512K", "error: invalid definition: memory: '512K' is too little; at least 16 MiB (16M)"),
        ("1.3G", "error: invalid definition: memory: '1.3G' is not a whole number of MiB; "
                 "use 1331M or 1332M"),
        ("1T", "error: memory: 1048576 MiB is more than this host's "),
        ("1.5G", "VM 'sz' defined from "),
    ],
)  # fmt: skip
def test_memory_sizes_at_define(
    fake_daemon: Daemon, tmp_path: Path, memory: str, answer: str
) -> None:
    path = tmp_path / "sz.yaml"
    path.write_text(f"name: sz\nmemory: {memory}\nboot:\n  kernel: /bin/sh\n")
    proc = qumran(fake_daemon, "define", str(path))
    assert (proc.stderr + proc.stdout).startswith(answer)
    assert (proc.stderr + proc.stdout).count("\n") == 1
    if memory == "1.5G":
        assert as_json(fake_daemon, "dominfo", "sz")["memory_mib"] == 1536
    else:
        assert proc.returncode == 1 and as_json(fake_daemon, "list", "--all") == []
