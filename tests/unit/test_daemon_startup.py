"""qumrand's start-up failures: one `qumrand: ...` line saying what, where and how to fix
it, exit status 1, never a traceback — each against a real qumrand process."""

from __future__ import annotations

import os
import pwd
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import Daemon, system_user
from qumran.daemon.store import SCHEMA_VERSION, Store

SECOND_USER = "qumran-t1"  # the same user as tests/unit/test_ownership.py


def qumrand(root: Path, *extra: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a qumrand that should fail at start-up; its defaults all live below ``root``."""
    argv = [
        sys.executable, "-m", "qumran.daemon.main", "--driver", "fake", "--log-level", "debug",
        "--socket", str(root / "q.sock"),
        "--state-dir", str(root / "state"),
        "--run-dir", str(root / "run"),
    ]  # fmt: skip
    argv += extra  # later options win over the defaults above
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kwargs)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("qumrand: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_second_qumrand_on_the_same_socket(fake_daemon: Daemon, daemon_root: Path) -> None:
    fake_daemon.call("POST", "/v1/vms", json={"name": "a", "memory": 64,
                                              "boot": {"kernel": "/bin/sh"}})  # fmt: skip
    other = daemon_root / "other"
    other.mkdir()
    line = one_line(qumrand(other, "--socket", fake_daemon.socket))
    assert line == (
        f"qumrand: another qumrand is already listening on {fake_daemon.socket}; "
        "stop it first, or give this one another --socket"
    )
    assert not (other / "state").exists()  # it stopped before opening a store
    assert fake_daemon.vm("a")["name"] == "a"  # the first one still answers on its socket


def test_a_state_dir_that_is_a_file(daemon_root: Path) -> None:
    (daemon_root / "state").write_text("not a directory\n")
    line = one_line(qumrand(daemon_root))
    assert line == (
        f"qumrand: the state directory {daemon_root}/state is not a directory; "
        "move it away or point --state-dir elsewhere"
    )
    assert not (daemon_root / "q.sock").exists()  # the socket it bound was let go


@pytest.mark.skipif(os.geteuid() != 0, reason="runs qumrand as another user; needs root")
def test_a_state_dir_the_daemons_user_cannot_write(daemon_root: Path) -> None:
    user = second_user()
    mine = daemon_root / "mine"  # the user's own: socket and run dir
    mine.mkdir()
    os.chown(mine, user.pw_uid, user.pw_gid)
    locked = daemon_root / "locked"  # root's, 0755
    locked.mkdir(mode=0o755)
    proc = qumrand(
        mine, "--state-dir", str(locked / "state"),
        user=user.pw_uid, group=user.pw_gid, extra_groups=[],
        env={**os.environ, "HOME": str(mine)},
    )  # fmt: skip
    line = one_line(proc)
    assert line == (
        f"qumrand: cannot use the state directory {locked}/state: Permission denied; "
        "make it writable by the daemon's user or point --state-dir elsewhere"
    )


def test_a_run_dir_that_cannot_be_created(daemon_root: Path) -> None:
    (daemon_root / "file").write_text("")
    line = one_line(qumrand(daemon_root, "--run-dir", str(daemon_root / "file" / "run")))
    assert line == (
        f"qumrand: cannot use the run directory {daemon_root}/file/run: Not a directory; "
        "make it writable by the daemon's user or choose another with --run-dir"
    )


def test_a_socket_path_that_cannot_be_bound(daemon_root: Path) -> None:
    (daemon_root / "file").write_text("")
    line = one_line(qumrand(daemon_root, "--socket", str(daemon_root / "file" / "q.sock")))
    assert line.startswith(f"qumrand: cannot listen on {daemon_root}/file/q.sock: ")
    assert "--socket" in line


def test_a_store_that_is_not_a_database(daemon_root: Path) -> None:
    (daemon_root / "state").mkdir(mode=0o700)
    db = daemon_root / "state" / "qumran.db"
    db.write_bytes(b"PK\x03\x04 a zip file, perhaps\n" * 100)
    db.chmod(0o600)
    line = one_line(qumrand(daemon_root))
    assert line.startswith(f"qumrand: the store {db} is not a qumran database (")
    assert "move it away" in line
    assert not (daemon_root / "q.sock").exists()


def test_a_store_from_a_newer_qumrand(daemon_root: Path) -> None:
    db = daemon_root / "state" / "qumran.db"
    Store(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
    conn.close()
    before = db.read_bytes(), db.stat().st_mtime_ns
    line = one_line(qumrand(daemon_root))
    assert line == (
        f"qumrand: the store {db} has schema version {SCHEMA_VERSION + 7}, written by a newer "
        f"qumrand; this one knows versions up to {SCHEMA_VERSION} (run the newer qumrand, "
        "or point --state-dir elsewhere)"
    )
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before


def test_a_busy_web_port(daemon_root: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        line = one_line(qumrand(daemon_root, "--web", address))
    assert line == (
        f"qumrand: cannot serve the web manager on {address}: Address already in use; "
        "choose another address with --web HOST:PORT or in the settings file ([web] address)"
    )
    assert not (daemon_root / "state").exists()


def second_user() -> pwd.struct_passwd:
    return system_user(SECOND_USER)
