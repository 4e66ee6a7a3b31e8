"""Storage pools and volumes against a real qumrand, with real qemu-img, as root.

Every command once the way it is meant to be used, then every refusal: each one a single
error line, and nothing changed (the pool's files are compared before and after).
Ownership between two real users is in test_storage_users.py; a qumrand killed in the
middle of a copy in test_storage_crash.py.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from daemon_harness import Daemon
from storage_cli import QUMRAN, names, ok, qemu_img_check, refused

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img"),
    pytest.mark.skipif(os.geteuid() != 0, reason="runs a root qumrand's pools"),
]

VOLUME_KEYS = {"name", "pool", "owner", "path", "format", "capacity", "allocation", "backing",
               "backing_format", "used_by"}  # fmt: skip
POOL_KEYS = {"name", "owner", "path", "usable", "problem", "capacity", "available",
             "allocation", "volumes"}  # fmt: skip


@pytest.fixture
def pool(fake_daemon: Daemon) -> Path:
    """Root's default pool, made by the first listing."""
    pools = ok(fake_daemon, "pool-list")
    assert [p["name"] for p in pools] == ["default"]
    path = Path(pools[0]["path"])
    assert path == fake_daemon.root / "state" / "pools" / "default"
    return path


def files(path: Path) -> dict[str, str]:
    """Every file in the pool (hidden ones too) and a digest of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def define(daemon: Daemon, tmp: Path, name: str, disks: str) -> subprocess.CompletedProcess[str]:
    doc = tmp / f"{name}.yaml"
    doc.write_text(f"name: {name}\nmemory: 64\nboot: {{kernel: /bin/sh}}\ndisks: {disks}\n")
    return subprocess.run([QUMRAN, "define", str(doc)], capture_output=True, text=True,
                          env=daemon.env)  # fmt: skip


def test_every_command_and_its_json(fake_daemon: Daemon, pool: Path, tmp_path: Path) -> None:
    d = fake_daemon
    web = ok(d, "vol-create", "web1", "1G")
    assert set(web) == VOLUME_KEYS
    assert (web["format"], web["capacity"], web["backing"], web["used_by"]) == (
        "qcow2", 1 << 30, None, [])  # fmt: skip
    st = os.stat(web["path"])
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)

    raw = ok(d, "vol-create", "data", "8M", "--format", "raw")
    assert (raw["format"], raw["capacity"]) == ("raw", 8 << 20)
    overlay = ok(d, "vol-create", "web1-top", "2G", "--backing", "web1")
    assert overlay["backing"] == web["path"] and overlay["backing_format"] == "qcow2"
    by_path = ok(d, "vol-create", "web1-top2", "1G", "--backing", raw["path"])
    assert by_path["backing"] == raw["path"] and by_path["backing_format"] == "raw"

    clone = ok(d, "vol-clone", "web1-top", "web2")
    assert clone["backing"] == web["path"]  # an overlay's copy is an overlay on the same file
    grown = ok(d, "vol-resize", "data", "16M")
    assert grown["capacity"] == 16 << 20

    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    imported = ok(d, "vol-import", "imported", str(image))
    assert (imported["format"], imported["capacity"]) == ("qcow2", 64 << 20)

    assert names(d) == ["data", "imported", "web1", "web1-top", "web1-top2", "web2"]
    assert names(d, "default") == names(d)
    info = ok(d, "vol-info", "web2")
    assert info == clone | {"allocation": info["allocation"]}
    for name in names(d):
        assert stat.S_IMODE(os.stat(pool / name).st_mode) == 0o600
        if name != "data":
            qemu_img_check(str(pool / name))

    ok(d, "vol-delete", "web2")
    assert "web2" not in names(d)
    pool_doc = ok(d, "pool-info", "default")
    assert set(pool_doc) == POOL_KEYS and pool_doc["volumes"] == 5 and pool_doc["usable"]

    second = tmp_path / "second"
    second.mkdir()
    defined = ok(d, "pool-define", "second", str(second))
    assert (defined["name"], defined["path"], defined["volumes"]) == ("second", str(second), 0)
    ok(d, "vol-create", "x", "1M", "--pool", "second", "--format", "raw")
    assert names(d, "second") == names(d, "--pool", "second") == ["x"]
    assert "two pools given" in refused(d, "vol-list", "default", "--pool", "second")
    assert sorted(p["name"] for p in ok(d, "pool-list")) == ["default", "second"]
    ok(d, "pool-undefine", "second")
    assert (second / "x").is_file()  # undefine never deletes files
    assert sorted(p["name"] for p in ok(d, "pool-list")) == ["default"]


def test_tables_for_people(fake_daemon: Daemon, pool: Path) -> None:
    ok(fake_daemon, "vol-create", "web1", "1G")
    out = subprocess.run([QUMRAN, "vol-list"], capture_output=True, text=True,
                         env=fake_daemon.env, check=True).stdout  # fmt: skip
    assert out.splitlines()[0].split() == ["Name", "Format", "Capacity", "Allocation", "Backing",
                                           "Used", "by"]  # fmt: skip
    assert out.splitlines()[2].split()[:4] == ["web1", "qcow2", "1.00", "GiB"]
    out = subprocess.run([QUMRAN, "pool-list"], capture_output=True, text=True,
                         env=fake_daemon.env, check=True).stdout  # fmt: skip
    assert "default" in out and "0 (root)" in out and str(pool) in out


def test_hidden_files_are_not_volumes_and_leftovers_go(fake_daemon: Daemon, pool: Path) -> None:
    leftover = pool / ".web1.part-0123456789abcdef"
    leftover.write_bytes(b"half a copy")
    mine = pool / ".notes"  # hidden but not ours: listed never, removed never
    mine.write_text("keep")
    (pool / "sub").mkdir()  # not a regular file: not a volume
    assert names(fake_daemon) == []
    assert not leftover.exists() and mine.exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("vol-create", "a/b", "1G"), "has a '/'"),
        (("vol-create", "..", "1G"), "'..'"),
        (("vol-create", "a..b", "1G"), "'..'"),
        (("vol-create", ".hidden", "1G"), "starts with '.'"),
        (("vol-create", "x", "0"), "size"),
        (("vol-create", "x", "1000K", "--format", "raw"), ""),  # a whole number of sectors: fine
        (("vol-create", "x", "1G", "--format", "vmdk"), "format"),
        (("vol-create", "x", "1G", "--format", "raw", "--backing", "base"), "only a qcow2"),
        (("vol-create", "x", "1024T"), "more than pool 'default' has free"),
        (("vol-create", "x", "1G", "--backing", "nothing"), "is not a volume of pool"),
        (("vol-create", "x", "1G", "--backing", "/nonexistent/disk"), "is not a volume of pool"),
        (("vol-create", "base", "1G"), "already"),
        (("vol-create", "x", "16M", "--backing", "base"), "smaller than the backing"),
        (("vol-resize", "base", "32M"), "shrinking"),
        (("vol-resize", "base", "1024T"), "more than pool 'default' has free"),
        (("vol-resize", "nothing", "2G"), "no volume named 'nothing'"),
        (("vol-clone", "base", "base"), "already"),
        (("vol-clone", "nothing", "y"), "no volume named 'nothing'"),
        (("vol-clone", "base", "../y"), "has a '/'"),
        (("vol-delete", "nothing"), "no volume named"),
        (("vol-info", "nothing"), "no volume named"),
        (("vol-import", "y", "/nonexistent"), "cannot be read"),
        (("vol-import", "y", "/dev"), "not a regular file"),
        (("vol-import", "base", "/etc/hostname"), "already"),
        (("vol-list", "nopool"), "no pool named 'nopool'"),
        (("vol-create", "x", "1G", "--pool", "nopool"), "no pool named 'nopool'"),
        (("pool-define", "p", "relative"), "not absolute"),
        (("pool-define", "p", "/tmp/../etc"), "plain absolute path"),
        (("pool-define", "p", "/"), "plain absolute path"),
        (("pool-define", "p", "/etc/hostname"), "cannot be opened as a directory"),
        (("pool-define", "p", "/nonexistent"), "cannot be opened as a directory"),
        (("pool-define", "default", "/tmp"), "already"),
        (("pool-define", "a/b", "/tmp"), "not a pool name"),
        (("pool-undefine", "default"), "cannot be undefined"),
        (("pool-info", "nopool"), "no pool named"),
    ],
)
def test_refusals_change_nothing(
    fake_daemon: Daemon, pool: Path, args: tuple[str, ...], words: str
) -> None:
    ok(fake_daemon, "vol-create", "base", "64M")
    before = files(pool)
    pools = _steady(ok(fake_daemon, "pool-list"))
    if not words:  # the control: the same line with a good value works
        ok(fake_daemon, *args)
        return
    assert words in refused(fake_daemon, *args)
    assert files(pool) == before
    assert _steady(ok(fake_daemon, "pool-list")) == pools


def _steady(pools: list[dict[str, object]]) -> list[dict[str, object]]:
    """Pools without their file system's free space (other programs change it)."""
    return [{k: v for k, v in p.items() if k != "available"} for p in pools]


def test_a_nul_in_a_name_is_refused_by_the_api(fake_daemon: Daemon, pool: Path) -> None:
    response = fake_daemon.call("POST", "/v1/pools/default/volumes",
                                json={"name": "a\0b", "size": 1 << 20})  # fmt: skip
    assert response.status_code == 400 and "NUL" in response.json()["error"]["message"]
    assert list(pool.iterdir()) == []


def test_a_pool_dir_must_be_the_callers(fake_daemon: Daemon, pool: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    assert "belongs to uid" in refused(fake_daemon, "pool-define", "p", str(theirs))


def test_volumes_in_use_by_a_definition(fake_daemon: Daemon, pool: Path, tmp_path: Path) -> None:
    d = fake_daemon
    ok(d, "vol-create", "web1", "64M")
    ok(d, "vol-create", "rawdisk", "8M", "--format", "raw")
    result = define(d, tmp_path, "vm1", "[{volume: web1}, {volume: rawdisk, readonly: true}]")
    assert result.returncode == 0, result.stderr
    stored = d.vm("vm1")["definition"]["disks"]
    assert stored[0] == {"volume": "web1", "pool": "default", "readonly": False}  # by volume
    assert [v["used_by"] for v in ok(d, "vol-list")] == [["vm1"], ["vm1"]]

    before = files(pool)
    assert "used by VM 'vm1'" in refused(d, "vol-delete", "web1")
    assert "used by VM 'vm1'" in refused(d, "vol-resize", "web1", "1G")
    assert files(pool) == before

    # It starts: the driver got the volume's path (the fake checks the file opens).
    started = d.call("POST", "/v1/vms/vm1/start")
    assert started.status_code == 200, started.text
    assert "running VM 'vm1'" in refused(d, "vol-clone", "web1", "copy")
    d.call("POST", "/v1/vms/vm1/destroy").raise_for_status()
    ok(d, "vol-clone", "web1", "copy")  # a stopped VM's disk may be copied

    # Order: undefine the VM first, then its volumes go.
    d.call("DELETE", "/v1/vms/vm1").raise_for_status()
    ok(d, "vol-delete", "web1")
    assert "web1" not in names(d)


def test_a_definition_naming_a_volume_that_is_not_there(
    fake_daemon: Daemon, pool: Path, tmp_path: Path
) -> None:
    d = fake_daemon
    result = define(d, tmp_path, "vm1", "[{volume: nothing}]")
    assert result.returncode == 1
    assert "disks[0].volume: no volume 'nothing' in pool 'default'" in result.stderr
    result = define(d, tmp_path, "vm1", "[{volume: x, pool: nopool}]")
    assert "disks[0].pool: uid 0 has no pool named 'nopool'" in result.stderr
    result = define(d, tmp_path, "vm1", "[{volume: x, path: /bin/sh}]")
    assert "disks[0]: give exactly one of path" in result.stderr
    ok(d, "vol-create", "q", "64M")
    result = define(d, tmp_path, "vm1", "[{volume: q, format: raw}]")
    assert "disks[0].format: the definition says raw but volume 'q' is qcow2" in result.stderr
    assert d.call("GET", "/v1/vms?all=true").json() == []


def test_a_volume_deleted_after_define_stops_the_start(
    fake_daemon: Daemon, pool: Path, tmp_path: Path
) -> None:
    d = fake_daemon
    ok(d, "vol-create", "web1", "64M")
    assert define(d, tmp_path, "vm1", "[{volume: web1}]").returncode == 0
    (pool / "web1").unlink()  # behind qumrand's back
    response = d.call("POST", "/v1/vms/vm1/start")
    assert response.status_code == 400
    assert "disks[0].volume: no volume 'web1'" in response.json()["error"]["message"]


def test_a_pool_holding_a_used_volume_cannot_be_undefined(
    fake_daemon: Daemon, pool: Path, tmp_path: Path
) -> None:
    d = fake_daemon
    other = tmp_path / "other"
    other.mkdir()
    ok(d, "pool-define", "other", str(other))
    ok(d, "vol-create", "disk", "64M", "--pool", "other")
    assert define(d, tmp_path, "vm1", "[{volume: disk, pool: other}]").returncode == 0
    assert "defined VMs use ('vm1')" in refused(d, "pool-undefine", "other")
    d.call("DELETE", "/v1/vms/vm1").raise_for_status()
    ok(d, "pool-undefine", "other")
    assert (other / "disk").is_file()


def test_pools_survive_a_restart(fake_daemon: Daemon, pool: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    ok(fake_daemon, "pool-define", "other", str(other))
    fake_daemon.restart()
    assert sorted(p["name"] for p in ok(fake_daemon, "pool-list")) == ["default", "other"]
