"""The SQLite store: definitions and runtime records survive reopening."""

from __future__ import annotations

from pathlib import Path

import pytest

from qumran.daemon.store import RuntimeRecord, Store, VmRecord
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
