"""A define and its event are one commit (one fsync with synchronous=FULL), and live
subscribers hear of an event only once it is committed."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from qumran.daemon.manager import Caller, Manager
from qumran.daemon.store import Store
from qumran.drivers.fake import FakeDriver

DOC = {"memory": 64, "boot": {"kernel": "/bin/sh"}}
ME = Caller(os.getuid(), os.getgid())


def commits(store: Store) -> list[str]:
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    return seen


def test_define_and_undefine_commit_once_each(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / "state" / "qumran.db")
        manager = Manager(store, {"qemu": FakeDriver()}, tmp_path / "run")
        statements = commits(store)
        await manager.define(ME, {"name": "one", **DOC})
        assert [s for s in statements if s == "COMMIT"] == ["COMMIT"]
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        statements.clear()
        await manager.undefine(ME, "one")
        assert [s for s in statements if s == "COMMIT"] == ["COMMIT"]
        assert [(e.vm, e.event) for e in store.events()] == [
            ("one", "defined"),
            ("one", "undefined"),
        ]
        store.close()
        # What was confirmed is in the database file, read by another connection.
        with sqlite3.connect(tmp_path / "state" / "qumran.db") as other:
            assert other.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2

    asyncio.run(main())


def test_a_failed_commit_leaves_no_vm_and_tells_nobody(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / "state" / "qumran.db")
        manager = Manager(store, {"qemu": FakeDriver()}, tmp_path / "run")
        queue = manager.events.subscribe()
        # The event row cannot be written: the define's transaction must roll back whole.
        store._db.execute("CREATE TRIGGER no_events BEFORE INSERT ON events "
                          "BEGIN SELECT RAISE(ABORT, 'disk says no'); END")  # fmt: skip
        with pytest.raises(sqlite3.Error):
            await manager.define(ME, {"name": "lost", **DOC})
        assert "lost" not in manager.domains
        assert store.vms() == [] and queue.empty()
        store._db.execute("DROP TRIGGER no_events")
        await manager.define(ME, {"name": "lost", **DOC})  # the name is free, nothing half-made
        assert (await asyncio.wait_for(queue.get(), 1)).vm == "lost"
        store.close()

    asyncio.run(main())


def test_writes_outside_a_transaction_commit_and_notify_at_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "state" / "qumran.db")
    heard: list[int] = []
    store.after_commit(lambda: heard.append(1))
    assert heard == [1]
    with store.transaction():
        store.after_commit(lambda: heard.append(2))
        with store.transaction():  # nested: part of the outer one
            store.after_commit(lambda: heard.append(3))
        assert heard == [1]
    assert heard == [1, 2, 3]
    with pytest.raises(RuntimeError), store.transaction():
        store.after_commit(lambda: heard.append(4))
        raise RuntimeError("rolled back")
    assert heard == [1, 2, 3]
    store.close()
