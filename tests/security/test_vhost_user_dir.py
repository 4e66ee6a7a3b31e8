"""The vhost-user socket folder of a native VM: the VM's owner writes in it, root qumrand
clears it at the next start. Whatever the owner planted there, root removes only what is
inside the folder, never what a link points at."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from attacker import as_user, plant_symlink
from security_tier import Users

from qumran.drivers.base import Owner, RunPaths
from qumran.drivers.native.storage import prepare_socket_dir, socket_dir

pytestmark = pytest.mark.security


def test_links_planted_in_the_socket_folder_are_removed_not_followed(
    users: Users, daemon_root: Path, root_only_dir: Path
) -> None:
    root_only_dir.chmod(0o755)
    victim = root_only_dir / "keep"
    victim.write_text("root's\n")
    (root_only_dir / "sub").mkdir()
    (root_only_dir / "sub" / "file").write_text("root's too\n")
    paths = RunPaths(daemon_root / "run" / "vms" / "web")
    owner = Owner(users.a.pw_uid, users.a.pw_gid)
    folder = prepare_socket_dir(paths, owner)
    assert folder == socket_dir(paths) and folder.stat().st_uid == users.a.pw_uid
    planted = [
        as_user(users.a, plant_symlink, str(folder / "disk0.sock"), str(victim)),
        as_user(users.a, plant_symlink, str(folder / "dir"), str(root_only_dir)),
        as_user(users.a, plant_symlink, str(folder / "sub"), str(root_only_dir / "sub")),
    ]
    assert planted == ["done"] * 3, planted

    again = prepare_socket_dir(paths, owner)  # the VM's next start, as root

    assert victim.read_text() == "root's\n"
    assert (root_only_dir / "sub" / "file").read_text() == "root's too\n"
    assert sorted(os.listdir(again)) == []
    assert not again.is_symlink() and again.stat().st_uid == users.a.pw_uid
