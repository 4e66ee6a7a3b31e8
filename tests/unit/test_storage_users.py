"""Volumes between two real users of a root qumrand: each sees and touches only their own.

User A makes volumes in A's default pool (in A's home, made on first use, as A); user B
must not see them, use them as a backing file, copy or delete them, whether named by
volume or by path, and the refusal must read the same as for something that does not
exist. Root sees everyone's pools. And a pool whose directory is (or becomes) a symbolic
link to a directory of root's is refused, never written with root's rights.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_harness import Daemon, system_user
from storage_cli import QUMRAN, names, ok, refused

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img"),
    pytest.mark.skipif(os.geteuid() != 0, reason="creates users; needs root"),
]
USERS = ("qumran-t1", "qumran-t2")  # the users test_ownership.py uses


@pytest.fixture(scope="module")
def users() -> Iterator[tuple[pwd.struct_passwd, pwd.struct_passwd]]:
    """Two real users, each with a home of their own (made here if the account has none,
    and removed again), where their default pool and image cache live."""
    made: list[Path] = []
    found = []
    for name in USERS:
        user = system_user(name)
        home = Path(user.pw_dir)
        if not home.exists():
            home.mkdir(mode=0o700, parents=True)
            os.chown(home, user.pw_uid, user.pw_gid)
            made.append(home)
        found.append(user)
    yield found[0], found[1]
    for home in made:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def clean_pools(users: tuple[pwd.struct_passwd, pwd.struct_passwd]) -> Iterator[None]:
    """Each test starts with no volumes, pools or images in the users' homes."""
    for user in users:
        for sub in (".local", ".cache"):
            shutil.rmtree(Path(user.pw_dir) / sub, ignore_errors=True)
    yield
    for user in users:
        for sub in (".local", ".cache"):
            shutil.rmtree(Path(user.pw_dir) / sub, ignore_errors=True)


def as_user(user: pwd.struct_passwd, *argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, user=user.pw_uid,
                   group=user.pw_gid, extra_groups=[], cwd="/", umask=0o077)  # fmt: skip


def test_a_users_volumes_are_theirs(
    fake_daemon: Daemon, users: tuple[pwd.struct_passwd, pwd.struct_passwd], clean_pools: None
) -> None:
    a, b = users
    vol = ok(fake_daemon, "vol-create", "disk", "64M", user=a)
    pool = Path(a.pw_dir) / ".local/share/qumran/pools/default"
    assert vol["path"] == str(pool / "disk") and vol["owner"] == a.pw_uid
    st = os.stat(vol["path"])
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (a.pw_uid, a.pw_gid, 0o600)
    assert os.stat(pool).st_uid == a.pw_uid  # the pool was made as A, not as root
    copy = ok(fake_daemon, "vol-clone", "disk", "copy", user=a)
    assert os.stat(copy["path"]).st_uid == a.pw_uid
    imported_from = Path(a.pw_dir) / "mine.raw"
    as_user(a, "qemu-img", "create", "-q", "-f", "raw", str(imported_from), "1M")
    imported = ok(fake_daemon, "vol-import", "imp", str(imported_from), user=a)
    assert os.stat(imported["path"]).st_uid == a.pw_uid

    # B sees nothing of A's: not in B's own pool, and not by naming A.
    assert names(fake_daemon, user=b) == []
    assert "only root may use another user's pools" in refused(
        fake_daemon, "vol-list", "--owner", str(a.pw_uid), user=b
    )
    for args in (("vol-info", "disk"), ("vol-delete", "disk"), ("vol-clone", "disk", "mine"),
                 ("vol-resize", "disk", "1G")):  # fmt: skip
        assert "no volume named 'disk'" in refused(fake_daemon, *args, user=b), args
    assert (pool / "disk").exists()

    # Nor as a backing file, by name or by path: the same words as for what is not there.
    words = "is not a volume of pool 'default', an image of yours or a file of yours"
    for backing in ("disk", vol["path"], str(pool / "nothing"), "/nonexistent"):
        error = refused(fake_daemon, "vol-create", "x", "1G", "--backing", backing, user=b)
        assert words in error, error
    assert "cannot be read by uid" in refused(
        fake_daemon, "vol-import", "stolen", vol["path"], user=b
    )  # A's file, read with B's rights
    assert names(fake_daemon, user=b) == []

    # Root sees every pool, with its owner, and may name A's.
    pools = {(p["owner"], p["name"]) for p in ok(fake_daemon, "pool-list")}
    assert {(0, "default"), (a.pw_uid, "default"), (b.pw_uid, "default")} <= pools
    assert [p["owner"] for p in ok(fake_daemon, "pool-list", user=b)] == [b.pw_uid]
    assert names(fake_daemon, "--owner", a.pw_name) == ["copy", "disk", "imp"]


def test_a_backing_image_from_the_users_own_cache(
    fake_daemon: Daemon, users: tuple[pwd.struct_passwd, pwd.struct_passwd], clean_pools: None
) -> None:
    a, b = users
    entry = Path(a.pw_dir) / ".cache/qumran/images/base-img"
    as_user(a, "mkdir", "-p", str(entry))
    as_user(a, "qemu-img", "create", "-q", "-f", "qcow2", str(entry / "disk.qcow2"), "128M")
    info = {"name": "base-img", "disk": "disk.qcow2", "format": "qcow2"}
    as_user(a, "sh", "-c", f"echo '{json.dumps(info)}' > {entry}/image.json")
    overlay = ok(fake_daemon, "vol-create", "web1", "1G", "--backing", "base-img", user=a)
    assert overlay["backing"] == str(entry / "disk.qcow2")
    assert overlay["backing_format"] == "qcow2"
    error = refused(fake_daemon, "vol-create", "web1", "1G", "--backing", "base-img", user=b)
    assert "is not a volume of pool 'default', an image of yours" in error


def test_a_pool_dir_that_links_to_roots_is_refused_and_harmless(
    fake_daemon: Daemon, users: tuple[pwd.struct_passwd, pwd.struct_passwd], clean_pools: None
) -> None:
    a, _ = users
    roots = Path(tempfile.mkdtemp(prefix="qroot-"))  # root's, 0700
    try:
        link = Path(a.pw_dir) / "link"
        as_user(a, "ln", "-s", str(roots), str(link))
        assert "cannot be opened as a directory by uid" in refused(
            fake_daemon, "pool-define", "p", str(link), user=a
        )
        roots.chmod(0o755)  # one A can open: still root's, so still refused
        assert "belongs to uid 0" in refused(fake_daemon, "pool-define", "p", str(link), user=a)

        # A's default pool swapped for a link to root's directory after it was made.
        ok(fake_daemon, "vol-create", "disk", "1M", "--format", "raw", user=a)
        pool = Path(a.pw_dir) / ".local/share/qumran/pools/default"
        as_user(a, "mv", str(pool), str(pool.with_name("old")))
        as_user(a, "ln", "-s", str(roots), str(pool))
        error = refused(fake_daemon, "vol-create", "evil", "1M", user=a)
        assert "belongs to uid 0" in error
        assert "belongs to uid 0" in refused(fake_daemon, "vol-list", user=a)
        assert list(roots.iterdir()) == []  # nothing written there with anyone's rights
    finally:
        shutil.rmtree(roots, ignore_errors=True)


def test_a_user_definition_names_their_own_volume_only(
    fake_daemon: Daemon, users: tuple[pwd.struct_passwd, pwd.struct_passwd], clean_pools: None,
) -> None:  # fmt: skip
    a, b = users
    ok(fake_daemon, "vol-create", "disk", "64M", user=a)
    for user, name in ((a, "avm"), (b, "bvm")):
        doc = fake_daemon.root / f"{name}.yaml"  # the daemon's folder: every user reads it
        doc.write_text(f"name: {name}\nmemory: 64\nboot: {{kernel: /bin/sh}}\n"
                       "disks: [{volume: disk}]\n")  # fmt: skip
        doc.chmod(0o644)
        result = subprocess.run(
            [QUMRAN, "define", str(doc)],
            capture_output=True, text=True, env=fake_daemon.env, user=user.pw_uid,
            group=user.pw_gid, extra_groups=[], cwd="/",
        )  # fmt: skip
        if user is a:
            assert result.returncode == 0, result.stderr
        else:
            assert "disks[0].volume: no volume 'disk' in pool 'default' of uid" in result.stderr
    assert "used by VM 'avm'" in refused(fake_daemon, "vol-delete", "disk", user=a)
    assert fake_daemon.call("POST", "/v1/vms/avm/start").status_code == 200
