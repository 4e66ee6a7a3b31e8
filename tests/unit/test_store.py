"""The SQLite store: definitions and runtime records survive reopening; every store an
earlier qumrand wrote opens with nothing lost, a newer one is refused untouched; the store
is private to the daemon's user."""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from daemon_harness import Daemon, system_user
from qumran.daemon import store as store_module
from qumran.daemon.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    RuntimeRecord,
    Store,
    StoreError,
    VmRecord,
    check_version,
)
from qumran.errors import AlreadyExists


def record(name: str, uuid: str) -> VmRecord:
    return VmRecord(uuid, name, 1000, 1000, {"name": name, "memory": 64}, False)


def test_definitions_survive_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    store.add_vm(record("a", "u1"))
    store.set_autostart("u1", True)
    store.set_runtime(RuntimeRecord("u1", "qemu", 42, 7, "/run/x", 1.0))
    store.close()
    again = Store(tmp_path / "q.db")
    [vm] = again.vms()
    assert (vm.name, vm.autostart, vm.definition["memory"]) == ("a", True, 64)
    assert again.runtimes()["u1"].pid == 42


def test_duplicate_names_are_refused_and_change_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    store.add_vm(record("a", "u1"))
    with pytest.raises(AlreadyExists, match="'a' already exists"):
        store.add_vm(record("a", "u2"))
    assert [v.uuid for v in store.vms()] == ["u1"]


def test_removing_a_vm_drops_its_runtime(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    store.add_vm(record("a", "u1"))
    store.set_runtime(RuntimeRecord("u1", "qemu", 42, 7, "/run/x", 1.0))
    store.remove_vm("u1")
    assert store.vms() == [] and store.runtimes() == {}


def test_events_filtered_by_owner_and_cursor(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    first = store.add_event("u1", "a", 1000, "started", "running", "booted", "")
    store.add_event("u2", "b", 1001, "started", "running", "booted", "")
    assert [e.vm for e in store.events(0, 1000)] == ["a"]
    assert [e.vm for e in store.events(first.id)] == ["b"]
    assert store.events(2**70) == [] and len(store.events(-(2**70))) == 2  # no overflow


# the schema's version -------------------------------------------------------------------

FIXTURES = Path(__file__).parent.parent / "fixtures"
V0_VMS = {
    "web1": ("8d1c0c3e-6f0a-4a43-9d0e-0f2f1a7c1a01", 1000, True, 256),
    "db": ("2b7e9a51-3c44-4e0b-8f6d-5a9b0c2d3e02", 1001, False, 512),
    "root-vm": ("f3a4b5c6-d7e8-4f90-a1b2-c3d4e5f60703", 0, False, 64),
}


def files_of(path: Path) -> dict[str, tuple[bytes, int]]:
    found = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in found if p.exists()}


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS[-1].version == SCHEMA_VERSION


def test_a_store_written_by_the_first_qumran_opens_with_nothing_lost(tmp_path: Path) -> None:
    # tests/fixtures/store-v0.db: written by the unversioned Store (see README there).
    path = tmp_path / "qumran.db"
    shutil.copy(FIXTURES / "store-v0.db", path)
    assert check_version(path) == 0
    store = Store(path)
    assert store.version() == SCHEMA_VERSION
    found = {v.name: (v.uuid, v.owner, v.autostart, v.definition["memory"]) for v in store.vms()}
    assert found == V0_VMS
    web1 = store.vms()[-1]
    assert web1.definition["boot"]["cmdline"] == "console=ttyS0 root=/dev/vda"
    assert web1.definition["disks"] == [{"path": "/var/lib/images/web1.qcow2"}]
    assert store.runtimes() == {
        V0_VMS["web1"][0]: RuntimeRecord(
            V0_VMS["web1"][0], "qemu", 4242, 123456, "/run/qumran/vms/8d1c0c3e-6f0a",
            1764100000.5,
        )
    }  # fmt: skip
    events = [(e.id, e.vm, e.event, e.state, e.reason, e.detail) for e in store.events()]
    assert events == [
        (1, "web1", "defined", "shutoff", "defined", ""),
        (2, "db", "defined", "shutoff", "defined", ""),
        (3, "root-vm", "defined", "shutoff", "defined", ""),
        (4, "web1", "started", "running", "booted", "pid 4242"),
        (5, "db", "started", "running", "booted", "pid 4300"),
        (6, "db", "stopped", "shutoff", "killed", "the process was killed by SIGKILL"),
        (7, "old", "undefined", "shutoff", "undefined", ""),
    ]
    assert store.last_events()[V0_VMS["db"][0]].reason == "killed"
    # And it keeps working: new rows follow the old ones, the foreign key still holds.
    assert store.add_event("u", "x", 1, "defined", "shutoff", "defined", "").id == 8
    store.remove_vm(V0_VMS["web1"][0])
    assert store.runtimes() == {}
    store.close()
    assert Store(path).version() == SCHEMA_VERSION  # reopening migrates nothing twice


def test_when_a_read_only_look_cannot_tell_the_version_the_read_write_open_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a crash SQLite may need to rebuild the WAL index, which a read-only
    connection cannot do ("attempt to write a readonly database", seen once in a kill -9
    soak): that is no reason to call the store "not a qumran database"."""
    path = tmp_path / "qumran.db"
    Store(path).close()
    real_connect = sqlite3.connect

    def read_only_fails(target: object, *args: object, **kwargs: object) -> sqlite3.Connection:
        if str(target).endswith("?mode=ro"):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real_connect(target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module.sqlite3, "connect", read_only_fails)
    Store(path).close()  # opens
    db = real_connect(path, isolation_level=None)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="written by a newer qumrand"):
        Store(path)  # still refused, by the read-write open, before any migration


def test_a_store_from_a_newer_qumrand_is_refused_and_left_untouched(tmp_path: Path) -> None:
    made = tmp_path / "made"
    made.mkdir(mode=0o700)
    path = made / "qumran.db"
    Store(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.execute("INSERT INTO events (time, uuid, vm, owner, event, state, reason)"
               " VALUES (1, 'u', 'v', 0, 'defined', 'shutoff', 'defined')")  # fmt: skip
    # Copied while the writer is open, as after a kill -9: the WAL holds the last write.
    copy = tmp_path / "copy"
    copy.mkdir(mode=0o700)
    for name in ("qumran.db", "qumran.db-wal"):
        shutil.copy(made / name, copy / name)
    db.close()
    for where in (made, copy):
        before = files_of(where / "qumran.db")
        with pytest.raises(StoreError, match="written by a newer qumrand") as caught:
            Store(where / "qumran.db")
        assert "\n" not in str(caught.value)
        after = files_of(where / "qumran.db")
        assert after["qumran.db"] == before["qumran.db"]
        if "qumran.db-wal" in before:
            assert after["qumran.db-wal"][0] == before["qumran.db-wal"][0]


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "qumran.db"
    path.write_bytes(b"these are not the pages you are looking for\n" * 200)
    with pytest.raises(StoreError, match="is not a qumran database"):
        Store(path)
    assert path.read_bytes().startswith(b"these are not")


def test_each_migration_is_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "qumran.db"
    Store(path).close()
    broken = Migration(SCHEMA_VERSION + 1, "half-done", ("CREATE TABLE t (x)", "NOT SQL"))
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, broken))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", broken.version)
    with pytest.raises(StoreError, match="syntax error"):
        Store(path)
    monkeypatch.undo()
    store = Store(path)
    assert store.version() == SCHEMA_VERSION
    tables = store._db.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchall()
    assert tables == []  # the first statement was rolled back with the second


# privacy ------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "qumran.db"
    store = Store(path)
    store.add_vm(record("a", "u1"))
    assert mode(path.parent) == 0o700
    found = {p.name: mode(p) for p in path.parent.iterdir()}
    assert found == {"qumran.db": 0o600, "qumran.db-wal": 0o600, "qumran.db-shm": 0o600}


def test_looser_modes_left_by_an_earlier_qumran_are_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / "qumran.db"
    shutil.copy(FIXTURES / "store-v0.db", path)
    for p in (state, path):
        p.chmod(0o755)
    (state / "qumran.db-wal").touch(mode=0o644)
    Store(path).close()
    assert mode(state) == 0o700 and mode(path) == 0o600


def test_a_symlink_in_place_of_the_store_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    Store(target).close()
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "qumran.db").symlink_to(target)
    with pytest.raises(StoreError, match="not a regular file"):
        Store(tmp_path / "state" / "qumran.db")


@pytest.mark.skipif(os.geteuid() != 0, reason="chowns to another user; needs root")
def test_a_store_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Store(state / "qumran.db").close()
    os.chown(state / "qumran.db", 65534, 65534)
    with pytest.raises(StoreError, match="belongs to uid 65534"):
        Store(state / "qumran.db")
    os.chown(state, 65534, 65534)
    with pytest.raises(StoreError, match=r"the state directory .* belongs to uid 65534"):
        Store(state / "qumran.db")


@pytest.mark.skipif(os.geteuid() != 0, reason="creates a user; needs root")
def test_another_user_cannot_read_a_running_daemons_store(fake_daemon: Daemon) -> None:
    user = a_second_user()
    fake_daemon.call("POST", "/v1/vms", json={"name": "secret", "memory": 64,
                                              "boot": {"kernel": "/bin/sh"}})  # fmt: skip
    state = fake_daemon.root / "state"
    names = sorted(p.name for p in state.iterdir())
    assert names == ["qumran.db", "qumran.db-shm", "qumran.db-wal"]
    for name in ["", *names]:
        proc = subprocess.run(
            ["cat", str(state / name)] if name else ["ls", str(state)],
            capture_output=True, user=user.pw_uid, group=user.pw_gid, extra_groups=[],
        )  # fmt: skip
        assert proc.returncode != 0 and b"Permission denied" in proc.stderr, name
        assert b"secret" not in proc.stdout


def a_second_user() -> pwd.struct_passwd:
    return system_user("qumran-t1")  # the same user as tests/unit/test_ownership.py


def test_a_qumrand_started_on_the_first_qumrans_store(daemon_root: Path) -> None:
    state = daemon_root / "state"
    state.mkdir(mode=0o755)  # as the first qumrand left it: readable by everyone
    shutil.copy(FIXTURES / "store-v0.db", state / "qumran.db")
    (state / "qumran.db").chmod(0o644)
    daemon = Daemon(daemon_root)
    daemon.start()
    try:
        vms = {vm["name"]: vm for vm in daemon.call("GET", "/v1/vms?all=true").json()}
        assert {n: (v["uuid"], v["owner"], v["autostart"]) for n, v in vms.items()} == {
            n: (uuid, owner, autostart) for n, (uuid, owner, autostart, _) in V0_VMS.items()
        }
        # web1's process (pid 4242 of another boot) is long gone; db keeps its reason.
        assert (vms["web1"]["state"], vms["web1"]["reason"]) == ("shutoff", "gone")
        assert (vms["db"]["state"], vms["db"]["reason"]) == ("shutoff", "killed")
        assert vms["db"]["definition"]["hypervisor"] == "native"
        events = daemon.call("GET", "/v1/events").json()
        assert [e["id"] for e in events][:7] == [1, 2, 3, 4, 5, 6, 7]
        assert (events[-1]["vm"], events[-1]["event"], events[-1]["reason"]) == (
            "web1", "stopped", "gone",
        )  # fmt: skip
        assert mode(state) == 0o700 and mode(state / "qumran.db") == 0o600
    finally:
        daemon.cleanup()
