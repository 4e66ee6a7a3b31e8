"""qumrand's settings file (docs/configuration.md): what it sets, what overrides it, and
a bad file as one line naming the file, the line and the key -- against real qumrands."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_harness import Daemon


def qumrand(*argv: str, root: Path) -> subprocess.CompletedProcess[str]:
    """A qumrand whose defaults all live below ``root`` (it is expected to stop at once)."""
    base = [
        sys.executable, "-m", "qumran.daemon.main", "--driver", "fake",
        "--socket", str(root / "q.sock"), "--state-dir", str(root / "state"),
        "--run-dir", str(root / "run"),
    ]  # fmt: skip
    return subprocess.run([*base, *argv], capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


BAD = [
    ('log-level = "loud"\n', "line 1: log-level: 'loud' is not one of debug, info, warning, error"),
    (
        '# qumrand\n\n[web]\nenabled = true\nadress = "127.0.0.1:8090"\n',
        "line 5: web.adress: unknown setting (known in [web]: enabled, address)",
    ),
    ("state-dir = /var/lib/q\n", "line 1, column 13: not valid TOML: invalid value"),
    ('run-dir = "run"\n', "line 1: run-dir: 'run' must be an absolute path"),
    ("[limits]\nmax-body = 0\n", "line 2: limits.max-body: 0 must be more than 0"),
    ("[limits]\nidle-timeout = 1.5\n", "line 2: limits.idle-timeout: 1.5 must be a whole number"),
    (
        "[limits]\nmax-conns = 5\n",
        "line 2: limits.max-conns: unknown setting (known in [limits]: max-conns-per-uid, ",
    ),
    ('web = "127.0.0.1:8090"\n', "line 1: web: must be a table ([web] with its keys below it)"),
    ('[web]\naddress = "localhost"\n',
     "line 2: web.address: 'localhost' is not HOST:PORT, such as 127.0.0.1:8090"),
    ("web.enabled = 1\n", "line 1: web.enabled: 1 must be true or false"),
    ('socket = "/tmp/x"\n', "line 1: socket: unknown setting (known: log-level, state-dir, "),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_a_bad_settings_file_is_one_line(daemon_root: Path, text: str, expected: str) -> None:
    path = daemon_root / "qumrand.toml"
    path.write_text(text)
    proc = qumrand("--config", str(path), root=daemon_root)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"qumrand: {path}, {expected}"), proc.stderr
    assert not (daemon_root / "q.sock").exists()  # it stopped before listening


def test_a_missing_named_file_is_an_error_the_default_one_is_not(daemon_root: Path) -> None:
    proc = qumrand("--config", str(daemon_root / "nope.toml"), root=daemon_root)
    assert proc.returncode == 1
    assert proc.stderr == f"qumrand: {daemon_root / 'nope.toml'}: no such settings file\n"


def test_the_file_sets_and_the_command_line_overrides(daemon_root: Path) -> None:
    port = free_port()
    path = daemon_root / "qumrand.toml"
    path.write_text(
        f'log-level = "debug"\n'
        f'run-dir = "{daemon_root}/elsewhere"\n'
        f'[web]\nenabled = true\naddress = "127.0.0.1:{port}"\n'
        f"[limits]\nmax-body = 2000\nheader-timeout = 3.5\n"
    )
    # The harness's --no-config comes first; the last of --config/--no-config counts.
    daemon = Daemon(daemon_root, options=("--config", str(path), "--max-body", "3000"))
    daemon.start()
    try:
        info = daemon.call("GET", "/v1/daemon").json()
        assert info["config_file"] == str(path)
        assert info["web"] == f"http://127.0.0.1:{port}"  # the file turned the web manager on
        # --log-level debug and --run-dir of the harness win over the file's.
        assert info["log_level"] == "debug"
        assert info["run_dir"] == str(daemon_root / "run")
        # --max-body 3000 wins over the file's 2000.
        assert daemon.call("POST", "/v1/vms", content=b"x" * 2500).status_code == 400
        assert daemon.call("POST", "/v1/vms", content=b"x" * 3500).status_code == 413
        token = daemon.call("POST", "/v1/web/token")
        assert token.status_code == 200 and token.json()["url"].startswith(info["web"])
        with socket.create_connection(("127.0.0.1", port)):
            pass  # the web manager listens where the file said
    finally:
        daemon.cleanup()
    daemon = Daemon(daemon_root, options=("--config", str(path), "--no-web"))
    daemon.start()
    try:
        assert daemon.call("GET", "/v1/daemon").json()["web"] is None
        assert daemon.call("POST", "/v1/web/token").status_code == 404
    finally:
        daemon.cleanup()


def test_help_shows_the_real_defaults() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qumran.daemon.main", "--help"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "None" not in proc.stdout
    for default in ("(default: 64)", "(default: 10.0)", "(default: 1048576)", "(default: info)",
                    "(default: real)", "127.0.0.1:8090"):  # fmt: skip
        assert default in proc.stdout, default
    if os.geteuid() == 0:
        assert "(default: /run/qumran/qumrand.sock;" in proc.stdout
        assert "(default: /var/lib/qumran)" in proc.stdout
        assert "(default: /etc/qumran/qumrand.toml;" in proc.stdout
