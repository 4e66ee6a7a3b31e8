"""save, restore and managedsave through a real qumrand (fake driver): every refusal is
one clear line, before any process starts. The saves themselves, with qumran-vmm under
KVM, are in tests/kvm/test_daemon_saves.py."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import Daemon, system_user
from forged_snapshots import tiny_snapshot
from qumran.vmm.snapshot.file import HEADER

QUMRAN = str(Path(sys.executable).parent / "qumran")


def define(daemon: Daemon, name: str) -> None:
    doc = {"name": name, "memory": 64, "boot": {"kernel": "/bin/sh"}}
    assert daemon.call("POST", "/v1/vms", json=doc).status_code == 201


def error(daemon: Daemon, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
    response = daemon.call(method, path, **kwargs)
    assert response.status_code >= 400, response.text
    return response.status_code, response.json()["error"]["message"]


def test_a_qemu_vm_is_refused_by_name(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, "q1")
    assert fake_daemon.call("POST", "/v1/vms/q1/start").status_code == 200
    for route, body in (("save", {"json": {"file": str(tmp_path / "s")}}), ("managedsave", {})):
        status, message = error(fake_daemon, "POST", f"/v1/vms/q1/{route}", **body)
        assert status == 409
        assert "fakevm (hypervisor: fake)" in message and "hypervisor: native" in message
    assert not (tmp_path / "s").exists()
    fake_daemon.call("POST", "/v1/vms/q1/destroy")
    tiny_snapshot(tmp_path / "q1.snap", "q1")
    status, message = error(fake_daemon, "POST", "/v1/restore",
                            json={"file": str(tmp_path / "q1.snap")})  # fmt: skip
    assert status == 409 and "fakevm" in message and "cannot restore" in message


def test_bad_files_are_refused_in_one_line(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, "v1")
    restore = lambda path: error(fake_daemon, "POST", "/v1/restore", json={"file": str(path)})  # noqa: E731
    (tmp_path / "text").write_text("hello\n")
    assert restore(tmp_path / "text") == (400, f"{tmp_path / 'text'} is not a qumran-vmm snapshot")
    status, message = restore(tmp_path / "missing")
    assert status == 400 and "cannot be opened by uid" in message
    assert restore(tmp_path) == (400, f"restore: {tmp_path} is not a regular file")
    tiny_snapshot(tmp_path / "nobody.snap", "nobody")
    status, message = restore(tmp_path / "nobody.snap")
    assert status == 404 and "'nobody'" in message
    snap = tmp_path / "v1.snap"
    tiny_snapshot(snap, "v1")
    data = bytearray(snap.read_bytes()[: HEADER.size + 40])
    data[HEADER.size + 20] ^= 1  # a byte of the machine state
    with open(snap, "r+b") as f:
        f.write(data)
    status, message = restore(snap)
    assert status == 400 and "damaged" in message and "machine state" in message
    status, message = error(fake_daemon, "DELETE", "/v1/vms/v1/managedsave")
    assert status == 404 and "no managed save" in message
    assert fake_daemon.vm("v1")["state"] == "shutoff"


@pytest.mark.skipif(os.geteuid() != 0, reason="creates a user; needs root")
def test_a_file_the_caller_cannot_read_reads_as_missing(
    fake_daemon: Daemon, daemon_root: Path
) -> None:
    """The daemon (root) opens the file with the caller's rights: root's own file, or one
    that is not there, get the same answer."""
    user = system_user("qumran-t1")
    secret = daemon_root / "root.snap"
    tiny_snapshot(secret, "x")
    secret.chmod(0o600)
    # A link of the user's own, in a folder of theirs, to root's file: followed with the
    # user's rights, so it gets no further than the file itself.
    theirs = Path(tempfile.mkdtemp(prefix="qumran-t1-"))
    os.chown(theirs, user.pw_uid, user.pw_gid)
    (theirs / "link.snap").symlink_to(secret)
    answers = [_qumran_as(fake_daemon, user, "restore", str(p))
               for p in (secret, daemon_root / "none.snap", theirs / "link.snap")]  # fmt: skip
    shutil.rmtree(theirs)
    for status, err in answers:
        assert status != 0 and "Traceback" not in err
        assert f"cannot be opened by uid {user.pw_uid} (missing, or no permission)" in err
    assert answers[0][1].replace("root.snap", "X") == answers[1][1].replace("none.snap", "X")


def _qumran_as(daemon: Daemon, user: pwd.struct_passwd, *args: str) -> tuple[int, str]:
    env = {"QUMRAN_SOCKET": daemon.socket, "PATH": os.environ["PATH"], "HOME": "/tmp",
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # fmt: skip
    proc = subprocess.run([QUMRAN, *args], capture_output=True, text=True, env=env, timeout=60,
                          user=user.pw_uid, group=user.pw_gid, extra_groups=[])  # fmt: skip
    return proc.returncode, proc.stderr
