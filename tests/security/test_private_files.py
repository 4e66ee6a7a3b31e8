"""Attacks 5 and 6 of issue 10: files of root qumrand that a user could read or change.

5. The store holds every user's definitions and events; the API shows each user only their
   own, so the database must not be readable around it.
6. Root qumrand follows paths in each VM's run directory (sockets, logs): nothing in it may
   be created, replaced, renamed or removed by the VM's owner.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from attacker import as_user, list_dir, read_bytes, vandalise_dir
from security_tier import Users, define_as, run_dir, start_as

from daemon_harness import Daemon

pytestmark = pytest.mark.security


def test_the_store_is_not_readable_by_a_user(
    fake_daemon: Daemon, users: Users, daemon_root: Path
) -> None:
    define_as(fake_daemon, None, "rootvm", daemon_root)
    define_as(fake_daemon, users.b, "bvm", daemon_root)
    state = daemon_root / "state"
    files = sorted(str(p) for p in state.rglob("*") if p.is_file())
    assert any(f.endswith(".db") for f in files), files  # the store is where we look

    listing = as_user(users.a, list_dir, str(state))
    contents = {path: as_user(users.a, read_bytes, path) for path in files}

    got = {path: len(c) for path, c in contents.items() if isinstance(c, bytes)}
    assert not got, f"A read {got} (bytes per file) of the store"
    assert isinstance(listing, str), f"A listed the state folder: {listing}"


def snapshot(folder: Path) -> dict[str, tuple[int, int, int, int]]:
    """What is in ``folder``, as root sees it: each entry's inode, type and owner, and the
    folder's own mode and owner (under the name ".")."""
    entries = {}
    for path in [folder, *folder.iterdir()]:
        st = path.lstat()
        name = "." if path == folder else path.name
        entries[name] = (st.st_ino, stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_uid)
    return entries


def test_the_owner_cannot_change_the_run_directory(
    fake_daemon: Daemon, users: Users, daemon_root: Path, scratch: Path
) -> None:
    define_as(fake_daemon, users.a, "avm", daemon_root)
    start_as(fake_daemon, users.a, "avm")
    folder = run_dir(fake_daemon, "avm")
    before = snapshot(folder)
    assert len(before) > 1, before  # the daemon keeps files there: something to attack

    attempts = as_user(users.a, vandalise_dir, str(folder), str(scratch))

    after = snapshot(folder)
    done = sorted(step for step, result in attempts.items() if result == "done")
    assert after == before, f"A changed the run directory with: {done}"
    assert done == [], f"{done} succeeded, though the folder looks the same"
