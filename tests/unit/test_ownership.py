"""Per-user ownership, with real second and third users talking to a root qumrand.

The daemon learns each caller's uid from the socket (SO_PEERCRED): a VM belongs to the
uid that defined it and runs as that uid; other non-root users neither see it nor can
touch it; root sees and manages all.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def users() -> dict[str, pwd.struct_passwd]:
    return {name: system_user(name) for name in USERS}


def qumran(daemon: Daemon, user: pwd.struct_passwd | None, *args: str) -> tuple[int, Any, str]:
    env = {"QUMRAN_SOCKET": daemon.socket, "PATH": os.environ["PATH"], "HOME": "/tmp"}
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    proc = subprocess.run(
        [QUMRAN, "--json", *args], capture_output=True, text=True, env=env, timeout=60, **kwargs
    )
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out, proc.stderr


def define_as(daemon: Daemon, user: pwd.struct_passwd | None, name: str, tmp: Path) -> None:
    path = tmp / f"{name}.yaml"
    path.write_text(f"name: {name}\nmemory: 64\nboot: {{kernel: /bin/sh}}\n")
    path.chmod(0o644)
    status, _, err = qumran(daemon, user, "define", str(path))
    assert status == 0, err


def test_users_see_and_manage_only_their_own_vms(
    fake_daemon: Daemon, users: dict[str, pwd.struct_passwd], daemon_root: Path
) -> None:
    t1, t2 = users["qumran-t1"], users["qumran-t2"]
    define_as(fake_daemon, None, "roots", daemon_root)
    define_as(fake_daemon, t1, "t1vm", daemon_root)

    _, listed, _ = qumran(fake_daemon, t1, "list", "--all")
    assert [v["name"] for v in listed] == ["t1vm"]
    _, listed, _ = qumran(fake_daemon, t2, "list", "--all")
    assert listed == []
    _, listed, _ = qumran(fake_daemon, None, "list", "--all")
    assert sorted(v["name"] for v in listed) == ["roots", "t1vm"]

    for verb in ("start", "dominfo", "undefine", "destroy"):
        status, _, err = qumran(fake_daemon, t2, verb, "t1vm")
        assert status == 1 and "belongs to another user" in err, (verb, err)
    status, _, err = qumran(fake_daemon, t1, "start", "roots")
    assert status == 1 and "belongs to another user" in err

    status, info, err = qumran(fake_daemon, t1, "start", "t1vm")
    assert status == 0, err
    assert info["owner"] == t1.pw_uid
    assert os.stat(f"/proc/{info['pid']}").st_uid == t1.pw_uid  # runs as its owner

    status, info, _ = qumran(fake_daemon, None, "destroy", "t1vm")  # root manages all
    assert status == 0 and info["state"] == "shutoff"
    assert fake_daemon.vm("t1vm")["owner"] == t1.pw_uid
