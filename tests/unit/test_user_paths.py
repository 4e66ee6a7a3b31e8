"""A user's kernel, initrd and disks are checked with that user's rights, not root's.

Real users (useradd) define VMs through a real root qumrand (fake driver). A root-only
file, a file in another user's private folder and a path that does not exist get the
same answer, so a refusal says nothing about folders the user cannot read; files the
user may open, through a supplementary group too, are accepted.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import Daemon, system_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates users; needs root")

QUMRAN = str(Path(sys.executable).parent / "qumran")
USERS = ("qumran-t1", "qumran-t2")
GROUP = "qumran-tg"  # a supplementary group of qumran-t1 only


@pytest.fixture(scope="module")
def users() -> dict[str, pwd.struct_passwd]:
    for name in USERS:
        system_user(name)
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True)
    subprocess.run(["usermod", "--append", "--groups", GROUP, USERS[0]], check=True)
    return {name: pwd.getpwnam(name) for name in USERS}


def qumran(daemon: Daemon, user: pwd.struct_passwd | None, *args: str) -> tuple[int, Any, str]:
    env = {"QUMRAN_SOCKET": daemon.socket, "PATH": os.environ["PATH"], "HOME": "/tmp"}
    if "PYTHONPATH" in os.environ:  # a source checkout under test
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    kwargs: dict[str, Any] = {}
    if user is not None:  # as a login would: the user's groups (the daemon looks them up)
        groups = os.getgrouplist(user.pw_name, user.pw_gid)
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": groups}
    proc = subprocess.run(
        [QUMRAN, "--json", *args], capture_output=True, text=True, env=env, timeout=60, **kwargs
    )
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out, proc.stderr.strip()


def define(
    daemon: Daemon, user: pwd.struct_passwd | None, name: str, **fields: Any
) -> tuple[int, str]:
    """Define a VM as ``user`` from a definition file; (exit status, stderr)."""
    doc = {"name": name, "memory": 64, **fields}
    path = daemon.root / f"{name}.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o644)
    status, _, err = qumran(daemon, user, "define", str(path))
    return status, err


def make_file(path: Path, mode: int, uid: int = 0, gid: int = 0) -> Path:
    path.write_text("not really a kernel\n")
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def test_files_the_user_cannot_open_get_one_answer_whatever_the_reason(
    fake_daemon: Daemon, users: dict[str, pwd.struct_passwd], daemon_root: Path
) -> None:
    t1, t2 = users["qumran-t1"], users["qumran-t2"]
    root_only = make_file(daemon_root / "root-only", 0o600)
    home = daemon_root / "t2-home"
    home.mkdir(mode=0o700)
    os.chown(home, t2.pw_uid, t2.pw_gid)
    in_home = make_file(home / "vmlinuz", 0o644, t2.pw_uid, t2.pw_gid)
    missing = daemon_root / "no-such-file"

    answers = []
    for i, path in enumerate((root_only, in_home, missing, home / "no-such-file")):
        status, err = define(fake_daemon, t1, f"vm{i}", boot={"kernel": str(path)})
        assert status == 1
        answers.append(err.replace(str(path), "PATH"))
    assert (
        answers
        == [
            f"error: boot.kernel: PATH cannot be opened by uid {t1.pw_uid} (missing, or no "
            f"permission); check the path, and that uid {t1.pw_uid} may read it"
        ]
        * 4
    )
    assert fake_daemon.call("GET", "/v1/vms?all=true").json() == []

    # The same files are fine for those who may read them: root, and t2 in its own home.
    assert define(fake_daemon, None, "roots", boot={"kernel": str(root_only)}) == (0, "")
    assert define(fake_daemon, t2, "t2vm", boot={"kernel": str(in_home)}) == (0, "")


def test_a_file_the_user_may_read_is_accepted_through_a_group_too(
    fake_daemon: Daemon, users: dict[str, pwd.struct_passwd], daemon_root: Path
) -> None:
    t1, t2 = users["qumran-t1"], users["qumran-t2"]
    readable = make_file(daemon_root / "vmlinuz", 0o644)
    group_only = make_file(daemon_root / "initrd", 0o640, 0, grp.getgrnam(GROUP).gr_gid)
    boot = {"kernel": str(readable), "initrd": str(group_only)}

    assert define(fake_daemon, t1, "ok", boot={"kernel": str(readable)}) == (0, "")
    assert define(fake_daemon, t1, "grouped", boot=boot) == (0, "")
    status, err = define(fake_daemon, t2, "t2vm", boot=boot)
    assert status == 1 and err.startswith(f"error: boot.initrd: {group_only} cannot be opened")
    assert fake_daemon.vm("grouped")["owner"] == t1.pw_uid
    # The VM process gets the groups its files were checked with, so it can open them too.
    assert fake_daemon.call("POST", "/v1/vms/grouped/start").status_code == 200
    pid = fake_daemon.vm("grouped")["pid"]
    status_lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    groups = next(line for line in status_lines if line.startswith("Groups:")).split()[1:]
    assert str(grp.getgrnam(GROUP).gr_gid) in groups
    fake_daemon.call("POST", "/v1/vms/grouped/destroy")


def test_a_writable_disk_needs_the_right_to_write(
    fake_daemon: Daemon, users: dict[str, pwd.struct_passwd], daemon_root: Path
) -> None:
    t1 = users["qumran-t1"]
    kernel = make_file(daemon_root / "vmlinuz", 0o644)
    image = make_file(daemon_root / "disk.img", 0o644)  # root's: t1 may read it only
    boot = {"kernel": str(kernel)}

    status, err = define(fake_daemon, t1, "rw", boot=boot, disks=[{"path": str(image)}])
    assert status == 1
    assert err == (
        f"error: disks[0].path: {image} cannot be opened by uid {t1.pw_uid} (missing, or no "
        f"permission); check the path, and that uid {t1.pw_uid} may read and write it "
        "(or set readonly: true)"
    )
    ro = [{"path": str(image), "readonly": True}]
    assert define(fake_daemon, t1, "ro", boot=boot, disks=ro) == (0, "")


def test_what_is_opened_must_be_a_file_and_a_fifo_cannot_hang_the_daemon(
    fake_daemon: Daemon, users: dict[str, pwd.struct_passwd], daemon_root: Path
) -> None:
    t1 = users["qumran-t1"]
    fifo = daemon_root / "fifo"
    os.mkfifo(fifo, 0o600)
    os.chown(fifo, t1.pw_uid, t1.pw_gid)
    for i, path in enumerate((fifo, daemon_root)):
        status, err = define(fake_daemon, t1, f"vm{i}", boot={"kernel": str(path)})
        assert (status, err) == (
            1,
            f"error: boot.kernel: {path} is not a regular file or block device",
        )


def test_start_checks_again_with_the_owners_rights(
    fake_daemon: Daemon, users: dict[str, pwd.struct_passwd], daemon_root: Path
) -> None:
    t1 = users["qumran-t1"]
    kernel = make_file(daemon_root / "vmlinuz", 0o644)
    assert define(fake_daemon, t1, "later", boot={"kernel": str(kernel)}) == (0, "")
    kernel.chmod(0o600)  # since the definition, the file became root's alone
    status, _, err = qumran(fake_daemon, t1, "start", "later")
    assert status == 1
    assert err.startswith(f"error: boot.kernel: {kernel} cannot be opened by uid {t1.pw_uid}")
    assert fake_daemon.vm("later")["state"] == "shutoff"
    kernel.chmod(0o644)
    status, info, err = qumran(fake_daemon, t1, "start", "later")
    assert status == 0 and info["state"] == "running", err
