"""Restores attacked by a user: a snapshot file names its VM, and the user writes the file.

A forges a snapshot that names B's VM, or root's, and asks qumrand (root) to restore it.
Were it obeyed, B's VM would run A's memory image: A's code inside B's guest, with B's
disks. The outcome checked: the other users' VMs untouched (not started, not replaced,
the running one still the same process), and one answer whatever state such a VM is in.
(VM names are one namespace for all users: that a name is taken is no secret, `define`
says it too.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from security_tier import Users, define_as, qumran, start_as

from daemon_harness import Daemon
from forged_snapshots import tiny_snapshot

pytestmark = pytest.mark.security


def test_a_snapshot_naming_another_users_vm_restores_nothing(
    fake_daemon: Daemon, users: Users, daemon_root: Path, scratch: Path
) -> None:
    define_as(fake_daemon, users.b, "bvm", daemon_root)
    define_as(fake_daemon, users.b, "bidle", daemon_root)
    define_as(fake_daemon, None, "rootvm", daemon_root)
    running = start_as(fake_daemon, users.b, "bvm")
    before = {name: fake_daemon.vm(name) for name in ("bvm", "bidle", "rootvm")}

    answers = {}
    for name in ("bvm", "bidle", "rootvm", "nosuch"):
        snap = scratch / f"{name}.snap"
        tiny_snapshot(snap, name)
        os.chown(snap, users.a.pw_uid, users.a.pw_gid)
        proc = qumran(fake_daemon, users.a, "restore", str(snap))
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        answers[name] = proc.stderr.replace(name, "NAME")

    # One answer for another's VM, running or shut off, a user's or root's.
    assert answers["bvm"] == answers["bidle"] == answers["rootvm"], answers
    assert "belongs to another user" in answers["bvm"]
    assert "no VM named" in answers["nosuch"]
    after = {name: fake_daemon.vm(name) for name in ("bvm", "bidle", "rootvm")}
    assert after["bvm"]["pid"] == running["pid"] and after["bvm"]["state"] == "running"
    for name in ("bidle", "rootvm"):
        assert after[name]["state"] == "shutoff" and after[name]["pid"] is None
    for name, info in after.items():
        assert info["reason"] == before[name]["reason"] != "restored", name
