"""qumrand under systemd: the units in contrib/systemd/ pass `systemd-analyze verify`
with no warning, listen where qumrand's clients look, and qumrand speaks sd_notify as
their Type=notify expects (READY=1 once serving; RELOADING=1, then READY=1, across a
restart; STOPPING=1) -- told to a real qumrand through a real notify socket."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_harness import Daemon
from qumran.config import paths
from qumran.daemon import config

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "contrib" / "systemd"
QUMRAND = Path(sys.executable).parent / "qumrand"  # the unit's ExecStart, made real here

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (the systemd package)"
)


def verify(folder: Path, tmp_path: Path, user: bool, exec_start: str) -> None:
    """Copy the units, point ExecStart at this checkout's qumrand, and verify them."""
    copies = tmp_path / "units"
    copies.mkdir()
    for unit in ("qumrand.service", "qumrand.socket"):
        text = (folder / unit).read_text()
        assert f"ExecStart={exec_start}\n" in text or unit.endswith(".socket")
        (copies / unit).write_text(text.replace(f"ExecStart={exec_start}", f"ExecStart={QUMRAND}"))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    proc = subprocess.run(
        ["systemd-analyze", *(["--user"] if user else []), "verify",
         str(copies / "qumrand.socket"), str(copies / "qumrand.service")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_LEVEL": "notice"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""  # not even a warning


@needs_analyze
def test_the_system_units_verify(tmp_path: Path) -> None:
    verify(UNITS, tmp_path, user=False, exec_start="/usr/local/bin/qumrand")


@needs_analyze
def test_the_user_units_verify(tmp_path: Path) -> None:
    verify(UNITS / "user", tmp_path, user=True, exec_start="%h/.local/bin/qumrand")


def test_the_units_listen_where_clients_look() -> None:
    system = (UNITS / "qumrand.socket").read_text()
    assert f"ListenStream={paths.SYSTEM_RUN_DIR}/qumrand.sock\n" in system
    # %t is $XDG_RUNTIME_DIR (the user manager's): the client's first choice.
    user = (UNITS / "user" / "qumrand.socket").read_text()
    assert "ListenStream=%t/qumran/qumrand.sock\n" in user
    for folder in (UNITS, UNITS / "user"):
        service = (folder / "qumrand.service").read_text()
        # VMs outlive qumrand: only qumrand is stopped; SIGHUP restarts it in place.
        assert "KillMode=process\n" in service and "Type=notify\n" in service
        assert "ExecReload=/bin/kill -HUP $MAINPID\n" in service
        assert "FileDescriptorName=api\n" in (folder / "qumrand.socket").read_text()


def test_the_example_settings_are_the_defaults(tmp_path: Path) -> None:
    """contrib/qumrand.toml (which setup copies) shows the real defaults, commented out."""
    example = (REPO / "contrib" / "qumrand.toml").read_text()
    assert config.apply_file(config.Settings.defaults(), tmp_path / "none", False) == (
        config.Settings.defaults()
    )
    plain = tmp_path / "plain.toml"
    plain.write_text(example)
    assert config.apply_file(config.Settings.defaults(), plain, True).limits == config.Limits()
    # Every setting uncommented, but the root-only paths: still the defaults.
    uncommented = re.sub(r"(?m)^# ([a-z-]+ = )", r"\1", example)
    uncommented = re.sub(r"(?m)^(state-dir|run-dir) = .*$", "", uncommented)
    plain.write_text(uncommented)
    settings = config.apply_file(config.Settings.defaults(), plain, True)
    assert settings == config.Settings(
        **{**config.Settings.defaults().__dict__, "config_file": plain}
    )
    keys = set(re.findall(r"(?m)^([a-z-]+) = ", uncommented))
    assert keys == {"log-level", "enabled", "address", *config._limit_keys()}


def test_qumrand_speaks_sd_notify(daemon_root: Path) -> None:
    path = daemon_root / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(30)
        os.environ["NOTIFY_SOCKET"] = str(path)
        daemon = Daemon(daemon_root)
        try:
            daemon.start()
        finally:
            del os.environ["NOTIFY_SOCKET"]
        try:
            ready = notify.recv(4096).decode()
            assert ready.startswith("READY=1\n") and f"MAINPID={daemon.proc.pid}" in ready
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGHUP)
            assert notify.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
            assert notify.recv(4096).decode().startswith("READY=1\n")  # the new qumrand
            # VM processes must not inherit what was meant for qumrand.
            body = {"name": "a", "memory": 64, "boot": {"kernel": "/bin/sh"}}
            assert daemon.call("POST", "/v1/vms", json=body).status_code == 201
            vm = daemon.call("POST", "/v1/vms/a/start").json()
            environ = Path(f"/proc/{vm['pid']}/environ").read_bytes().split(b"\0")
            meant = (b"NOTIFY_SOCKET=", b"LISTEN_", b"QUMRAN_SOCKET_SOURCE=")
            assert [v for v in environ if v.startswith(meant)] == []
            daemon.proc.send_signal(signal.SIGTERM)
            assert notify.recv(4096).decode() == "STOPPING=1"
            assert daemon.proc.wait(30) == 0
            daemon.proc = None
        finally:
            daemon.cleanup()
