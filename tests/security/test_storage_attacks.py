"""Storage pools and volumes attacked by their owner: root qumrand must not be their hands.

A pool is a directory its owner writes in, so every path under it can be swapped by that
user between two steps of the daemon. Root qumrand lists, creates, converts, resizes and
deletes volumes there; each attack below turns one of those operations toward a root-only
file (the pool made a link to root's folder, a volume made a link to root's file, a backing
file or an imported image naming root's secret, an overlay whose backing chain ends in it)
and checks the outcome: root's files unchanged, no secret in any answer or volume, and the
same refusal whether the file named exists or not (no path oracle).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest
from attacker import as_user, plant_symlink
from security_tier import Users, qumran

from daemon_harness import Daemon

pytestmark = pytest.mark.security


def fingerprint(folder: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry of ``folder`` as root sees it: inode, mode, size and content digest."""
    seen = {}
    for path in sorted(folder.iterdir()):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        seen[path.name] = (st.st_ino, st.st_mode, st.st_size, digest)
    return seen


def run_as(user: pwd.struct_passwd, *argv: str) -> subprocess.CompletedProcess[str]:
    """A program run as ``user`` (no supplementary groups), as that user could run it."""
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60,
        user=user.pw_uid, group=user.pw_gid, extra_groups=[],
    )  # fmt: skip


def a_pool(daemon: Daemon, users: Users, scratch: Path, name: str = "apool") -> Path:
    """A pool of A's in A's own folder, with one small qcow2 volume ``v1``."""
    folder = scratch / name
    result = run_as(users.a, "mkdir", "-m", "0755", str(folder))
    assert result.returncode == 0, result.stderr
    for args in (("pool-define", name, str(folder)), ("vol-create", "--pool", name, "v1", "1M")):
        proc = qumran(daemon, users.a, *args)
        assert proc.returncode == 0, proc.stderr
    return folder


def test_a_pool_swapped_for_a_link_to_roots_folder_changes_nothing_there(
    fake_daemon: Daemon, users: Users, scratch: Path, root_only_dir: Path
) -> None:
    folder = a_pool(fake_daemon, users, scratch)
    root_only_dir.chmod(0o755)  # A may look in, not write: the daemon is the only way in
    victim = root_only_dir / "v1"
    victim.write_bytes(b"ROOT-DATA " * 1000)
    (root_only_dir / "v2").write_bytes(b"MORE-ROOT-DATA")
    before = fingerprint(root_only_dir)
    os.rename(folder, scratch / "apool.real")  # as root, to save A a step; A owns the target
    planted = as_user(users.a, plant_symlink, str(folder), str(root_only_dir))
    assert planted == "done", planted  # A's own folder: A may point it anywhere

    answers = {
        " ".join(args): qumran(fake_daemon, users.a, *args)
        for args in (
            ("vol-list", "--pool", "apool"),
            ("vol-info", "--pool", "apool", "v1"),
            ("vol-resize", "--pool", "apool", "v1", "2G"),
            ("vol-clone", "--pool", "apool", "v1", "v3"),
            ("vol-create", "--pool", "apool", "v4", "1M"),
            ("vol-delete", "--pool", "apool", "v2"),
            ("vol-delete", "--pool", "apool", "v1"),
        )
    }

    assert fingerprint(root_only_dir) == before, {k: v.stderr for k, v in answers.items()}
    for command, proc in answers.items():
        assert "Traceback" not in proc.stderr, (command, proc.stderr)
        assert "ROOT-DATA" not in proc.stdout + proc.stderr, command
        assert "v2" not in proc.stdout or command.startswith("vol-delete"), (command, proc.stdout)


def test_a_volume_swapped_for_a_link_to_roots_file_is_not_followed(
    fake_daemon: Daemon, users: Users, scratch: Path, root_only_dir: Path
) -> None:
    folder = a_pool(fake_daemon, users, scratch)
    root_only_dir.chmod(0o755)
    victim = root_only_dir / "disk.raw"
    victim.write_bytes(b"\0" * 65536)
    before = fingerprint(root_only_dir)
    planted = as_user(users.a, plant_symlink, str(folder / "v1"), str(victim))
    assert planted == "done", planted

    answers = [
        qumran(fake_daemon, users.a, *args)
        for args in (
            ("vol-resize", "--pool", "apool", "v1", "1G"),
            ("vol-clone", "--pool", "apool", "v1", "copy"),
            ("vol-delete", "--pool", "apool", "v1"),
        )
    ]

    assert fingerprint(root_only_dir) == before, [p.stderr for p in answers]
    assert all("Traceback" not in p.stderr for p in answers), [p.stderr for p in answers]
    assert not (folder / "copy").exists(), "a clone of root's file was made"


def refusal(proc: subprocess.CompletedProcess[str], path: str) -> str:
    """The refusal with the path named in it taken out, for comparing two refusals."""
    assert proc.returncode != 0, f"accepted: {proc.stdout}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.replace(path, "PATH")


def test_roots_files_as_backing_or_import_are_refused_as_if_missing(
    fake_daemon: Daemon, users: Users, scratch: Path, secret_file: tuple[Path, str]
) -> None:
    secret, text = secret_file
    secret.parent.chmod(0o755)  # A may reach the file, not read it: the daemon must not either
    missing = str(secret.parent / "no-such-file")
    a_pool(fake_daemon, users, scratch)
    link = scratch / "link-to-secret"
    assert as_user(users.a, plant_symlink, str(link), str(secret)) == "done"

    backing = ("vol-create", "--pool", "apool", "ov", "1G", "--backing")
    imported = ("vol-import", "--pool", "apool", "imp")
    for target in (str(secret), str(link)):
        for verb in (backing, imported):
            got = qumran(fake_daemon, users.a, *verb, target)
            absent = qumran(fake_daemon, users.a, *verb, missing)
            assert refusal(got, target) == refusal(absent, missing), (verb, target)

    listing = qumran(fake_daemon, users.a, "--json", "vol-list", "--pool", "apool")
    assert listing.returncode == 0, listing.stderr
    names = sorted(v["name"] for v in json.loads(listing.stdout))
    assert names == ["v1"], names
    for path in (scratch / "apool").iterdir():
        assert text.encode() not in path.read_bytes(), path


def test_an_overlay_whose_backing_chain_ends_in_roots_file_gives_nothing_away(
    fake_daemon: Daemon, users: Users, scratch: Path, secret_file: tuple[Path, str]
) -> None:
    """A qcow2 A made (without opening its backing file) names root's secret as backing."""
    secret, text = secret_file
    secret.parent.chmod(0o755)
    a_pool(fake_daemon, users, scratch)
    overlay = scratch / "evil.qcow2"
    made = run_as(
        users.a, "qemu-img", "create", "-f", "qcow2", "-u", "-b", str(secret), "-F", "raw",
        str(overlay), "1M",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr

    answers = [
        qumran(fake_daemon, users.a, "vol-import", "--pool", "apool", "imp", str(overlay)),
        qumran(fake_daemon, users.a, "vol-create", "--pool", "apool", "--backing", str(overlay),
               "ov", "1M"),
    ]  # fmt: skip

    for proc in answers:
        assert text not in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
    # Refused as the caller's mistake, with the words used for a file that is not A's.
    assert "missing, or not yours" in answers[1].stderr, answers[1].stderr
    for path in (scratch / "apool").iterdir():
        data = path.read_bytes()
        assert text.encode() not in data, f"{path.name} holds root's secret"
