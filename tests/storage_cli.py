"""The storage commands run for real, as root or as a real second user, for the tests."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon_harness import Daemon

QUMRAN = str(Path(sys.executable).parent / "qumran")


@dataclass(frozen=True)
class Result:
    status: int
    doc: Any  # the --json answer (None when there is none)
    err: str


def qumran(daemon: Daemon, *args: str, user: pwd.struct_passwd | None = None) -> Result:
    """``qumran --json ARGS`` as ``user`` (None: the test's own user, root)."""
    env = {"QUMRAN_SOCKET": daemon.socket, "PATH": os.environ["PATH"], "HOME": "/tmp"}
    if "PYTHONPATH" in os.environ:  # a worktree's sources, as the daemon runs them
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    proc = subprocess.run(
        [QUMRAN, "--json", *args], capture_output=True, text=True, env=env, timeout=120,
        cwd="/", **kwargs,
    )  # fmt: skip
    doc = json.loads(proc.stdout) if proc.stdout.strip() else None
    return Result(proc.returncode, doc, proc.stderr.strip())


def ok(daemon: Daemon, *args: str, user: pwd.struct_passwd | None = None) -> Any:
    result = qumran(daemon, *args, user=user)
    assert result.status == 0, (args, result.err)
    return result.doc


def refused(daemon: Daemon, *args: str, user: pwd.struct_passwd | None = None) -> str:
    """The one error line of a refused command."""
    result = qumran(daemon, *args, user=user)
    assert result.status == 1, (args, result.doc)
    assert result.err.startswith("error: ") and "\n" not in result.err, result.err
    assert "Traceback" not in result.err
    return result.err


def names(daemon: Daemon, *args: str, user: pwd.struct_passwd | None = None) -> list[str]:
    return [v["name"] for v in ok(daemon, "vol-list", *args, user=user)]


def qemu_img_check(path: str) -> None:
    proc = subprocess.run(["qemu-img", "check", "-q", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
