"""A definition's bounds, as a client meets them: a real qumrand answers 400, never 500.

And memory beyond the host's RAM is refused unless the define is forced
(``POST /v1/vms?force=true``, ``qumran define --force``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import Daemon
from qumran.drivers.checks import host_memory_mib

QUMRAN = str(Path(sys.executable).parent / "qumran")
GOOD = {"name": "web", "memory": 64, "boot": {"kernel": "/bin/sh"}}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"boot": {"kernel": "/" + "k" * 300}}, "boot.kernel: path has a 300-byte component"),
        ({"boot": {"kernel": "/k" * 3000}}, "boot.kernel: path is 6000 bytes long"),
        ({"boot": {"kernel": "/bin/sh\u0000x"}}, "boot.kernel: path contains a NUL"),
        ({"memory": "8388608T"}, "memory: more than any host has"),  # 2^63 bytes
        ({"memory": "9" * 4300}, "memory: a 4300-digit size is far too large"),
        ({"name": "web\n"}, "name: 'web\\n' is not a valid name"),
        ({"disks": [{"path": "/bin/sh", "readonly": True}] * 10_000}, "disks: at most 16 entries"),
        ({"nics": [{}] * 9}, "nics: at most 8 entries, got 9"),
        ({"boot": {"kernel": "/bin/sh", "cmdline": "x" * 5000}}, "boot.cmdline: cmdline is 5000"),
    ],
)
def test_out_of_bounds_definitions_are_400s(
    fake_daemon: Daemon, fields: dict[str, Any], message: str
) -> None:
    response = fake_daemon.call("POST", "/v1/vms", json={**GOOD, **fields})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid-argument"
    assert error["message"].startswith(f"invalid definition: {message}")


def test_more_memory_than_the_host_has_needs_force(fake_daemon: Daemon) -> None:
    total = host_memory_mib()
    assert total is not None
    big = {**GOOD, "memory": total + 1}
    response = fake_daemon.call("POST", "/v1/vms", json=big)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(
        f"memory: {total + 1} MiB is more than this host's {total} MiB of RAM"
    )
    response = fake_daemon.call("POST", "/v1/vms?force=true", json=big)
    assert response.status_code == 201
    assert response.json()["memory_mib"] == total + 1


def test_the_cli_forces_too(fake_daemon: Daemon, daemon_root: Path) -> None:
    total = host_memory_mib()
    assert total is not None
    path = daemon_root / "big.yaml"
    path.write_text(f"name: big\nmemory: {total + 1}\nboot: {{kernel: /bin/sh}}\n")

    def define(*flags: str) -> subprocess.CompletedProcess[str]:
        argv = [QUMRAN, "--json", "define", *flags, str(path)]
        return subprocess.run(argv, capture_output=True, text=True, env=fake_daemon.env)

    refused = define()
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: memory: ") and "--force" in refused.stderr
    forced = define("--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["memory_mib"] == total + 1


def test_a_billion_laughs_file_is_refused_by_the_cli_at_once(daemon_root: Path) -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]")
    path = daemon_root / "lol.yaml"
    path.write_text("\n".join(lines) + "\n")
    run = subprocess.run(
        [QUMRAN, "define", str(path)], capture_output=True, text=True, timeout=10
    )  # the daemon is never reached: the file is refused as it is read
    assert run.returncode == 1
    assert run.stderr == (
        f"error: {path}: invalid YAML at line 1: anchors and aliases (& and *) are not allowed "
        "in a definition\n"
    )
