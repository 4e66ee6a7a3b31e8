"""Attack 2 of issue 10: symlinks planted for a restarted qumrand to follow when it
re-attaches to a running VM.

A replaces ``console.sock`` with a symlink to qumrand's API socket and ``console.log`` with
one to a root-only file. When qumrand comes back (after SIGTERM, or kill -9) and re-attaches,
it must neither show A that file (the console's history is seeded from the log) nor let A's
keystrokes reach the API as root.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from attacker import as_user, http_request, plant_symlink
from security_tier import Users, all_names, define_as, qumran, run_dir, start_as

from daemon_harness import Daemon

pytestmark = pytest.mark.security

PWNED = {"name": "pwned", "memory": 64, "boot": {"kernel": "/bin/sh"}}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_restarted_daemon_follows_no_symlink_of_the_owner(
    fake_daemon: Daemon,
    users: Users,
    daemon_root: Path,
    secret_file: tuple[Path, str],
    sig: signal.Signals,
) -> None:
    secret_path, secret = secret_file
    define_as(fake_daemon, None, "rootvm", daemon_root)
    define_as(fake_daemon, users.a, "avm", daemon_root)
    start_as(fake_daemon, users.a, "avm")
    folder = run_dir(fake_daemon, "avm")

    def plant() -> dict[str, str]:
        return {
            "console.sock": plant_symlink(str(folder / "console.sock"), fake_daemon.socket),
            "console.log": plant_symlink(str(folder / "console.log"), str(secret_path)),
        }

    planted = as_user(users.a, plant)
    fake_daemon.restart(sig)

    # Typed into the console: a definition, then a listing of every user's VMs.
    keys = http_request("POST", "/v1/vms", json.dumps(PWNED).encode(), close=False)
    keys += http_request("GET", "/v1/vms?all=true")
    # --history: the recent output, seeded from console.log at the restart, is shown too.
    console = qumran(
        fake_daemon, users.a, "console", "avm", "--history", "--timeout", "3", stdin=keys.decode()
    )
    seen = console.stdout + console.stderr

    context = f"planted: {planted}; A's console showed: {seen[-600:]!r}"
    assert secret not in seen, context  # the root-only file was not shown to A
    assert "rootvm" not in seen, context  # nothing answered A as root
    names = all_names(fake_daemon)
    assert "pwned" not in names, f"defined as uid {names.get('pwned')}; {context}"
