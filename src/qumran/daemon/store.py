"""Persistent state in SQLite: definitions, what is running where, and the event log.

The store is the daemon's memory across restarts. A definition survives every failed
operation and a killed daemon: writes are single transactions, and the database runs in
WAL mode with synchronous=FULL so a committed definition is on disk.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qumran.errors import AlreadyExists

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    owner INTEGER NOT NULL,
    owner_gid INTEGER NOT NULL,
    definition TEXT NOT NULL,
    autostart INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runtime (
    uuid TEXT PRIMARY KEY REFERENCES vms(uuid) ON DELETE CASCADE,
    driver TEXT NOT NULL,
    pid INTEGER NOT NULL,
    start_time INTEGER,
    run_dir TEXT NOT NULL,
    started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    uuid TEXT NOT NULL,
    vm TEXT NOT NULL,
    owner INTEGER NOT NULL,
    event TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""


@dataclass(frozen=True)
class VmRecord:
    uuid: str
    name: str
    owner: int
    owner_gid: int
    definition: dict[str, Any]
    autostart: bool


@dataclass(frozen=True)
class RuntimeRecord:
    uuid: str
    driver: str
    pid: int
    start_time: int | None
    run_dir: str
    started_at: float


@dataclass(frozen=True)
class EventRecord:
    id: int
    time: float
    uuid: str
    vm: str
    owner: int
    event: str
    state: str
    reason: str
    detail: str


class Store:
    """One SQLite database; used from the event loop thread only."""

    EVENTS_KEPT = 10_000

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # definitions
    def add_vm(self, record: VmRecord) -> None:
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO vms VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.uuid,
                        record.name,
                        record.owner,
                        record.owner_gid,
                        json.dumps(record.definition),
                        int(record.autostart),
                        time.time(),
                    ),
                )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"a VM named {record.name!r} already exists") from None

    def remove_vm(self, uuid: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM vms WHERE uuid = ?", (uuid,))

    def set_autostart(self, uuid: str, enabled: bool) -> None:
        with self._tx() as db:
            db.execute("UPDATE vms SET autostart = ? WHERE uuid = ?", (int(enabled), uuid))

    def vms(self) -> list[VmRecord]:
        rows = self._db.execute(
            "SELECT uuid, name, owner, owner_gid, definition, autostart FROM vms ORDER BY name"
        )
        return [VmRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), bool(r[5])) for r in rows]

    # what runs where
    def set_runtime(self, rec: RuntimeRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO runtime VALUES (?, ?, ?, ?, ?, ?)",
                (rec.uuid, rec.driver, rec.pid, rec.start_time, rec.run_dir, rec.started_at),
            )

    def clear_runtime(self, uuid: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM runtime WHERE uuid = ?", (uuid,))

    def runtimes(self) -> dict[str, RuntimeRecord]:
        rows = self._db.execute("SELECT * FROM runtime")
        return {r[0]: RuntimeRecord(*r) for r in rows}

    # events
    def add_event(
        self, uuid: str, vm: str, owner: int, event: str, state: str, reason: str, detail: str
    ) -> EventRecord:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO events (time, uuid, vm, owner, event, state, reason, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (now, uuid, vm, owner, event, state, reason, detail),
            )
            event_id = int(cur.lastrowid or 0)
            if event_id % 1000 == 0:
                db.execute("DELETE FROM events WHERE id <= ?", (event_id - self.EVENTS_KEPT,))
        return EventRecord(event_id, now, uuid, vm, owner, event, state, reason, detail)

    def events(
        self, since: int = 0, owner: int | None = None, limit: int = 1000
    ) -> list[EventRecord]:
        query = "SELECT * FROM events WHERE id > ?"
        args: list[Any] = [since]
        if owner is not None:
            query += " AND owner = ?"
            args.append(owner)
        query += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [EventRecord(*r) for r in self._db.execute(query, args)]
