"""Helpers of the security tier: two users, and the CLI, the API and the web manager as them."""

from __future__ import annotations

import json
import os
import pwd
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from daemon_harness import Daemon

QUMRAN = str(Path(sys.executable).parent / "qumran")
USERS = ("qumran-t1", "qumran-t2")  # the same users tests/unit/test_ownership.py uses


@dataclass(frozen=True)
class Users:
    a: pwd.struct_passwd  # the attacker
    b: pwd.struct_passwd  # a bystander whose VMs A must not reach


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the CLI and the API as a user ------------------------------------------------------


def qumran(
    daemon: Daemon, user: pwd.struct_passwd | None, *args: str, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The qumran CLI run as ``user`` (None: root)."""
    env = {"QUMRAN_SOCKET": daemon.socket, "PATH": os.environ["PATH"], "HOME": "/tmp"}
    if "PYTHONPATH" in os.environ:  # a worktree's sources, as the daemon runs them
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return subprocess.run(
        [QUMRAN, *args], input=stdin, capture_output=True, text=True, env=env,
        timeout=timeout, **kwargs,
    )  # fmt: skip


def define_as(
    daemon: Daemon, user: pwd.struct_passwd | None, name: str, folder: Path, **fields: Any
) -> None:
    doc = {"name": name, "memory": 64, "boot": {"kernel": "/bin/sh"}, **fields}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o644)
    proc = qumran(daemon, user, "define", str(path))
    assert proc.returncode == 0, proc.stderr


def start_as(daemon: Daemon, user: pwd.struct_passwd | None, name: str) -> dict[str, Any]:
    proc = qumran(daemon, user, "--json", "start", name)
    assert proc.returncode == 0, proc.stderr
    info: dict[str, Any] = json.loads(proc.stdout)
    return info


def run_dir(daemon: Daemon, name: str) -> Path:
    """Where qumrand keeps the runtime files of VM ``name`` (Manager._prepare_run_dir)."""
    uuid: str = daemon.vm(name)["uuid"]
    return daemon.root / "run" / "vms" / uuid[:13]


def all_names(daemon: Daemon) -> dict[str, int]:
    """Every defined VM and its owner, as root sees them."""
    response = daemon.call("GET", "/v1/vms", params={"all": "true"})
    response.raise_for_status()
    return {vm["name"]: vm["owner"] for vm in response.json()}


# --- the web manager as a user ------------------------------------------------------------


class WebSession:
    """A browser logged in to the web manager with the URL `qumran web` gave ``user``."""

    def __init__(self, daemon: Daemon, user: pwd.struct_passwd) -> None:
        assert daemon.web is not None
        self.base = f"http://{daemon.web}"
        proc = qumran(daemon, user, "web")
        assert proc.returncode == 0, proc.stderr
        with httpx.Client() as c:
            response = c.get(proc.stdout.strip())
        assert response.status_code == 303, response.text
        self.cookie = f"qumran_session={response.cookies['qumran_session']}"
        page = httpx.get(self.base + "/", headers={"cookie": self.cookie}).text
        assert f"uid {user.pw_uid}" in page  # logged in as A, not as root
        found = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert found
        self.csrf = found.group(1)

    def ws(self, path: str) -> ClientConnection:
        """A WebSocket from a page of this server (the Origin the daemon checks)."""
        url = self.base.replace("http:", "ws:") + path
        return connect(
            url,
            origin=Origin(self.base),
            additional_headers={"cookie": self.cookie},
            open_timeout=10,
        )
