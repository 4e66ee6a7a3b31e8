"""Attacks 3 and 4 of issue 10: the hypervisor's log, a path in the owner's reach.

3. A start that the hypervisor refuses quotes the end of the log in its error. A swaps the
   log for a symlink to a root-only file while QEMU fails: the error must not show the file.
4. Root opens the log to hand it to the hypervisor. A races a symlink into its place,
   pointing into a root-only folder: no file may ever be created there (root would create
   it, and the VM process, running as A, would hold it open for writing).
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from attacker import (
    Racer,
    as_user,
    http_over_unix,
    http_request,
    plant_symlink,
    race_log_swap,
    race_log_symlink,
)
from security_tier import Users, define_as, run_dir

from daemon_harness import Daemon

pytestmark = pytest.mark.security

FAILED_STARTS = 10
RACE_ROUNDS = int(os.environ.get("QUMRAN_LOG_RACE_ROUNDS", "30"))


def api_as(daemon: Daemon, user: pwd.struct_passwd, method: str, path: str) -> str:
    """One API call made by ``user`` itself (SO_PEERCRED sees its uid); the raw answer."""
    answer = as_user(user, http_over_unix, daemon.socket, http_request(method, path))
    return answer.decode(errors="replace")


def test_a_failed_start_quotes_no_root_only_file(
    qemu_daemon: Daemon, users: Users, daemon_root: Path, secret_file: tuple[Path, str]
) -> None:
    secret_path, secret = secret_file
    define_as(qemu_daemon, users.a, "bad", daemon_root)  # kernel /bin/sh: QEMU refuses it
    first = api_as(qemu_daemon, users.a, "POST", "/v1/vms/bad/start")
    assert not first.startswith("HTTP/1.1 2"), first  # the hypervisor refuses it
    log = str(run_dir(qemu_daemon, "bad") / "hypervisor.log")

    answers = []
    planted = as_user(users.a, plant_symlink, log, str(secret_path))  # before the start
    answers.append(api_as(qemu_daemon, users.a, "POST", "/v1/vms/bad/start"))
    with Racer(users.a, race_log_swap, log, str(secret_path)) as racer:  # and during it
        for _ in range(FAILED_STARTS):
            answers.append(api_as(qemu_daemon, users.a, "POST", "/v1/vms/bad/start"))
    events = api_as(qemu_daemon, users.a, "GET", "/v1/events")

    leaks = [a for a in answers if secret in a]
    context = f"planted: {planted}; swaps: {racer.result}; leaked in {len(leaks)} of {len(answers)}"
    assert not leaks, f"{context}: {leaks[0][-400:]!r}"
    assert secret not in events, context


def test_the_log_race_creates_no_file_for_root(
    fake_daemon: Daemon, users: Users, daemon_root: Path, root_only_dir: Path
) -> None:
    define_as(fake_daemon, users.a, "racer", daemon_root)
    log = str(run_dir(fake_daemon, "racer") / "hypervisor.log")
    with Racer(users.a, race_log_symlink, log, str(root_only_dir)) as racer:
        for _ in range(RACE_ROUNDS):
            answer = api_as(fake_daemon, users.a, "POST", "/v1/vms/racer/start")
            assert answer.startswith("HTTP/1.1 200"), answer  # each round raced a real start
            fake_daemon.call("POST", "/v1/vms/racer/destroy").raise_for_status()

    created = sorted(p.name for p in root_only_dir.iterdir())
    context = f"{RACE_ROUNDS} starts, {racer.result} symlinks planted"
    assert created == [], f"{context}; root created {created} in {root_only_dir}"
