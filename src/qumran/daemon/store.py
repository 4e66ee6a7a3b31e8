"""Persistent state in SQLite: definitions, what is running where, and the event log.

The store is the daemon's memory across restarts. A definition survives every failed
operation and a killed daemon: writes are single transactions, and the database runs in
WAL mode with synchronous=FULL so a committed definition is on disk.

It holds every user's definitions, command lines and events, so it is private to the
daemon's user: the directory 0700, the database and its -wal/-shm files 0600 (looser
modes left by an earlier qumrand are tightened at start; a directory or file owned by
someone else is refused, since its owner could rewrite what the daemon trusts).

The schema is versioned with ``PRAGMA user_version``: :data:`MIGRATIONS` are applied in
order, each in one transaction, so a store written by any earlier qumrand opens with
nothing lost. A store from a newer qumrand is refused before anything is written to it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qumran.errors import AlreadyExists, QumranError

log = logging.getLogger(__name__)

SQLITE_MAX_INT = 2**63 - 1  # a larger cursor is past every event, not an overflow


class StoreError(QumranError):
    """The store cannot be used: unreadable, not a database, foreign, or too new."""


@dataclass(frozen=True)
class Migration:
    version: int  # the user_version once applied
    what: str
    statements: tuple[str, ...]


# Version 0 is the unversioned schema of the first qumrand: the same three tables, made
# with CREATE TABLE IF NOT EXISTS, so migration 1 is a no-op on such a store and creates
# them in a new one. Never edit a migration once released; append a new one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "definitions, runtime records and the event log",
        (
            """CREATE TABLE IF NOT EXISTS vms (
                uuid TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                owner INTEGER NOT NULL,
                owner_gid INTEGER NOT NULL,
                definition TEXT NOT NULL,
                autostart INTEGER NOT NULL DEFAULT 0,
                created REAL NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS runtime (
                uuid TEXT PRIMARY KEY REFERENCES vms(uuid) ON DELETE CASCADE,
                driver TEXT NOT NULL,
                pid INTEGER NOT NULL,
                start_time INTEGER,
                run_dir TEXT NOT NULL,
                started_at REAL NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                time REAL NOT NULL,
                uuid TEXT NOT NULL,
                vm TEXT NOT NULL,
                owner INTEGER NOT NULL,
                event TEXT NOT NULL,
                state TEXT NOT NULL,
                reason TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT ''
            )""",
        ),
    ),
    Migration(
        2,
        "each VM's last event, found without a scan (a restarted daemon keeps the reason)",
        ("CREATE INDEX IF NOT EXISTS events_by_vm ON events (uuid, id)",),
    ),
    Migration(
        3,
        "a running VM's edited definition, kept for its next start (NULL: none)",
        ("ALTER TABLE vms ADD COLUMN pending TEXT",),
    ),
    Migration(
        4,
        "storage pools: a directory per (owner, name); volumes are the files in it",
        (
            """CREATE TABLE IF NOT EXISTS pools (
                owner INTEGER NOT NULL,
                name TEXT NOT NULL,
                path TEXT NOT NULL,
                created REAL NOT NULL,
                PRIMARY KEY (owner, name)
            )""",
        ),
    ),
    Migration(
        5,
        "virtual networks: root's definitions, autostart, and whether each is running",
        (
            """CREATE TABLE IF NOT EXISTS networks (
                name TEXT PRIMARY KEY,
                definition TEXT NOT NULL,
                autostart INTEGER NOT NULL DEFAULT 0,
                active INTEGER NOT NULL DEFAULT 0,
                created REAL NOT NULL
            )""",
            # Things done once in a store's life (the default network made: an undefined
            # default stays undefined).
            """CREATE TABLE IF NOT EXISTS marks (
                name TEXT PRIMARY KEY,
                time REAL NOT NULL
            )""",
        ),
    ),
    Migration(
        6,
        "each VM's SSH host key, made before its first boot and given to it by its seed",
        (
            """CREATE TABLE IF NOT EXISTS host_keys (
                uuid TEXT PRIMARY KEY REFERENCES vms(uuid) ON DELETE CASCADE,
                private TEXT NOT NULL,
                public TEXT NOT NULL
            )""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


@dataclass(frozen=True)
class VmRecord:
    uuid: str
    name: str
    owner: int
    owner_gid: int
    definition: dict[str, Any]
    autostart: bool
    # An edit saved while the VM ran: the definition its next start uses (libvirt's
    # inactive configuration); None when there is none.
    pending: dict[str, Any] | None = None


@dataclass(frozen=True)
class PoolRecord:
    """A storage pool: a directory of ``owner``'s; its name is unique per owner."""

    owner: int
    name: str
    path: str
    created: float


@dataclass(frozen=True)
class NetworkRecord:
    """A virtual network; ``active``: started and not yet destroyed (a restarted qumrand
    re-adopts what such a network runs)."""

    name: str
    definition: dict[str, Any]
    autostart: bool
    active: bool
    created: float


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
        self.path = path
        make_private_dir(path.parent)
        for each in _files_of(path):
            make_private_file(each)
        if not path.exists():
            _create_private(path)
        check_version(path)  # before the read-write open: a newer store stays untouched
        try:
            self._open: list[Callable[[], None]] | None = None  # in transaction(): after it
            self._db = sqlite3.connect(path, isolation_level=None)
            _refuse_newer(path, self.version())  # if the read-only look could not tell
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")  # not settable inside a transaction
            self._migrate()
        except StoreError:
            self._db.close()
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from None
        for each in _files_of(path):  # SQLite made -wal and -shm: check them too
            make_private_file(each)

    def close(self) -> None:
        self._db.close()

    def version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        for migration in MIGRATIONS:
            with self._tx() as db:
                # Read inside the transaction: the version and the change move together.
                if int(db.execute("PRAGMA user_version").fetchone()[0]) >= migration.version:
                    continue
                for statement in migration.statements:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {migration.version:d}")
            log.info("store %s: schema version %d (%s)", self.path, migration.version,
                     migration.what)  # fmt: skip

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self._open is not None:  # part of transaction(): its commit is theirs
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The writes made inside, committed together: one commit, so one fsync of the
        WAL where each write alone would have its own (a define and its event: half the
        wait). Durability is unchanged: nothing is confirmed before COMMIT returns. What
        must wait for the commit (telling live subscribers) goes to :meth:`after_commit`."""
        if self._open is not None:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._open = []
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._open = None
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        later, self._open = self._open, None
        for action in later:
            action()

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once what was written so far is committed (now, outside
        :meth:`transaction`; dropped if the transaction rolls back)."""
        if self._open is None:
            action()
        else:
            self._open.append(action)

    # definitions
    def add_vm(self, record: VmRecord) -> None:
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO vms (uuid, name, owner, owner_gid, definition, autostart,"
                    " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
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

    def set_definition(self, uuid: str, definition: dict[str, Any]) -> None:
        """Replace a VM's definition (and drop any pending one)."""
        with self._tx() as db:
            db.execute(
                "UPDATE vms SET definition = ?, pending = NULL WHERE uuid = ?",
                (json.dumps(definition), uuid),
            )

    def set_pending(self, uuid: str, definition: dict[str, Any] | None) -> None:
        """Keep ``definition`` for the VM's next start (None: forget the pending one)."""
        text = None if definition is None else json.dumps(definition)
        with self._tx() as db:
            db.execute("UPDATE vms SET pending = ? WHERE uuid = ?", (text, uuid))

    def host_key(self, uuid: str) -> tuple[str, str] | None:
        """The VM's SSH host key pair (private, public), if it has one."""
        row = self._db.execute(
            "SELECT private, public FROM host_keys WHERE uuid = ?", (uuid,)
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def set_host_key(self, uuid: str, private: str, public: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO host_keys (uuid, private, public) VALUES (?, ?, ?)",
                (uuid, private, public),
            )

    def vms(self) -> list[VmRecord]:
        rows = self._db.execute(
            "SELECT uuid, name, owner, owner_gid, definition, autostart, pending FROM vms"
            " ORDER BY name"
        )
        return [
            VmRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), bool(r[5]), _json_or_none(r[6]))
            for r in rows
        ]

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
        rows = self._db.execute(
            "SELECT uuid, driver, pid, start_time, run_dir, started_at FROM runtime"
        )
        return {r[0]: RuntimeRecord(*r) for r in rows}

    # storage pools
    def add_pool(self, record: PoolRecord) -> None:
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO pools (owner, name, path, created) VALUES (?, ?, ?, ?)",
                    (record.owner, record.name, record.path, record.created),
                )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"a pool named {record.name!r} already exists") from None

    def remove_pool(self, owner: int, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM pools WHERE owner = ? AND name = ?", (owner, name))

    def pools(self) -> list[PoolRecord]:
        rows = self._db.execute("SELECT owner, name, path, created FROM pools ORDER BY owner, name")
        return [PoolRecord(*r) for r in rows]

    # networks
    def add_network(self, record: NetworkRecord) -> None:
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO networks (name, definition, autostart, active, created)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (record.name, json.dumps(record.definition), int(record.autostart),
                     int(record.active), record.created),
                )  # fmt: skip
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"a network named {record.name!r} already exists") from None

    def remove_network(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM networks WHERE name = ?", (name,))

    def set_network_flags(self, name: str, *, autostart: bool | None = None,
                          active: bool | None = None) -> None:  # fmt: skip
        with self._tx() as db:
            if autostart is not None:
                db.execute("UPDATE networks SET autostart = ? WHERE name = ?",
                           (int(autostart), name))  # fmt: skip
            if active is not None:
                db.execute("UPDATE networks SET active = ? WHERE name = ?", (int(active), name))

    def networks(self) -> list[NetworkRecord]:
        rows = self._db.execute(
            "SELECT name, definition, autostart, active, created FROM networks ORDER BY name"
        )
        return [NetworkRecord(n, json.loads(d), bool(a), bool(x), c) for n, d, a, x, c in rows]

    def mark(self, name: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO marks (name, time) VALUES (?, ?)",
                       (name, time.time()))  # fmt: skip

    def marked(self, name: str) -> bool:
        row = self._db.execute("SELECT 1 FROM marks WHERE name = ?", (name,)).fetchone()
        return row is not None

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
        query = f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ?"
        args: list[Any] = [max(0, min(since, SQLITE_MAX_INT))]
        if owner is not None:
            query += " AND owner = ?"
            args.append(owner)
        query += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [EventRecord(*r) for r in self._db.execute(query, args)]

    def last_events(self) -> dict[str, EventRecord]:
        """Each VM's most recent event (by uuid), for the state a restarted daemon shows."""
        rows = self._db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events"
            " WHERE id IN (SELECT MAX(id) FROM events GROUP BY uuid)"
        )
        return {r[2]: EventRecord(*r) for r in rows}


def _json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


_EVENT_COLUMNS = "id, time, uuid, vm, owner, event, state, reason, detail"


def check_version(path: Path) -> int | None:
    """The store's schema version, read without writing; refuse one this qumrand cannot read.

    A read-only connection never checkpoints the WAL into the database file, so a store
    from a newer qumrand is left exactly as it was. After a crash, though, a read-only
    connection cannot rebuild the WAL's index (that writes the -shm file): then the
    version is unknown here (None) and is checked right after the read-write open."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.OperationalError as exc:
        if "readonly" in str(exc):
            return None
        raise StoreError(f"cannot read the store {path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"the store {path} is not a qumran database ({exc}); "
            "move it away to start with an empty store, or point --state-dir elsewhere"
        ) from None
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the store {path}: {exc}") from None
    _refuse_newer(path, version)
    return version


def _refuse_newer(path: Path, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the store {path} has schema version {version}, written by a newer qumrand; "
            f"this one knows versions up to {SCHEMA_VERSION} (run the newer qumrand, "
            "or point --state-dir elsewhere)"
        )


# privacy of the store ------------------------------------------------------------------


def _files_of(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if os.path.lexists(p)]


def make_private_dir(path: Path) -> None:
    """Create ``path`` 0700 (parents as needed), or make an existing one ours and 0700."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.stat(path)
    except FileExistsError:
        st = os.stat(path)
    except OSError as exc:
        raise StoreError(_os_problem(path, "the state directory", exc)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(
            f"the state directory {path} is not a directory; move it away or point "
            "--state-dir elsewhere"
        )
    _check_owner(path, "the state directory", st)
    if stat.S_IMODE(st.st_mode) & 0o077:
        log.warning("the state directory %s was mode %o; making it 0700", path,
                    stat.S_IMODE(st.st_mode))  # fmt: skip
        _chmod(path, 0o700, "the state directory")


def make_private_file(path: Path) -> None:
    """An existing database file: a regular file of ours, mode 0600 (tightened if looser)."""
    try:
        st = os.lstat(path)  # the directory is ours and 0700 now: nobody swaps it after this
    except OSError as exc:
        raise StoreError(_os_problem(path, "the store file", exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(
            f"the store file {path} is not a regular file (a symbolic link or a device?); "
            "move it away"
        )
    _check_owner(path, "the store file", st)
    if stat.S_IMODE(st.st_mode) & 0o077:
        log.warning("the store file %s was mode %o; making it 0600", path,
                    stat.S_IMODE(st.st_mode))  # fmt: skip
        _chmod(path, 0o600, "the store file")


def _create_private(path: Path) -> None:
    # Created 0600 before SQLite sees it: SQLite gives its -wal and -shm the same mode.
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except OSError as exc:
        raise StoreError(_os_problem(path, "the store file", exc)) from None


def _check_owner(path: Path, what: str, st: os.stat_result) -> None:
    if st.st_uid != os.geteuid():
        raise StoreError(
            f"{what} {path} belongs to uid {st.st_uid}, not to this daemon's user "
            f"(uid {os.geteuid()}); its owner could rewrite the store. chown it to "
            "the daemon's user or point --state-dir elsewhere"
        )


def _chmod(path: Path, mode: int, what: str) -> None:
    try:
        os.chmod(path, mode)
    except OSError as exc:
        raise StoreError(_os_problem(path, what, exc)) from None


def _os_problem(path: Path, what: str, exc: OSError) -> str:
    return (
        f"cannot use {what} {path}: {exc.strerror or exc}; "
        "make it writable by the daemon's user or point --state-dir elsewhere"
    )
