"""The pool registry: each owner's named directories, kept in the store.

A pool is (owner, name) -> an absolute directory owned by that owner. Every owner has a
``default`` pool, registered and made on first use: root's in the daemon's state
directory (``<state>/pools/default``), a user's in their data directory
(``<home>/.local/share/qumran/pools/default``, the home from the password database:
the daemon cannot learn a user's ``XDG_DATA_HOME`` in a way it could trust, so it does
not try; a user who wants it elsewhere defines ``default`` before first using it).
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from qumran.config import volnames
from qumran.daemon.storage import fsops
from qumran.daemon.storage.asowner import call
from qumran.daemon.store import PoolRecord, Store
from qumran.drivers.base import Owner
from qumran.errors import InvalidArgument, InvalidState, NotFound

DEFAULT = "default"
USER_POOLS = Path(".local/share/qumran/pools")  # under a user's home
_UNSEEN = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ELOOP}


@dataclass(frozen=True)
class Pool:
    owner: int
    name: str
    path: Path

    def volume_path(self, name: str) -> Path:
        return self.path / name


def check_pool_name(name: str) -> str:
    try:
        return volnames.pool_name(name)
    except ValueError as exc:
        raise InvalidArgument(f"pool: {exc}") from None


def check_volume_name(name: str, what: str = "name") -> str:
    try:
        return volnames.volume_name(name)
    except ValueError as exc:
        raise InvalidArgument(f"{what}: {exc}") from None


def check_dir_path(path: str) -> Path:
    """An absolute, plain path: no ``.`` or ``..`` parts, no empty ones, not ``/``."""
    if "\0" in path:
        raise InvalidArgument("path: contains a NUL character")
    if not path.startswith("/"):
        raise InvalidArgument(f"path: {path!r} is not absolute; give the pool's full path")
    parts = path.rstrip("/").split("/")[1:]
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument(
            f"path: {path!r} must be a plain absolute path to a directory (no '.', '..' "
            "or '//' parts, and not '/' itself)"
        )
    return Path(path)


class Registry:
    """Pools by (owner, name), from the store; default pools made on first use."""

    def __init__(self, store: Store, state_dir: Path) -> None:
        self.store = store
        self.state_dir = state_dir

    def all(self) -> list[Pool]:
        return [Pool(r.owner, r.name, Path(r.path)) for r in self.store.pools()]

    def find(self, owner: int, name: str) -> Pool | None:
        return next((p for p in self.all() if p.owner == owner and p.name == name), None)

    def default_path(self, uid: int) -> Path:
        if uid == 0:
            return self.state_dir / "pools" / DEFAULT
        try:
            home = pwd.getpwuid(uid).pw_dir
        except KeyError:
            raise InvalidState(
                f"uid {uid} has no account here, so no home for its default pool; define "
                "one with `qumran pool-define default DIR`"
            ) from None
        return Path(home) / USER_POOLS / DEFAULT

    async def get(self, owner: Owner, name: str) -> Pool:
        """The pool ``name`` of ``owner``: its ``default`` made now if it is the first use."""
        check_pool_name(name)
        pool = self.find(owner.uid, name)
        if pool is not None:
            return pool
        if name != DEFAULT:
            raise NotFound(f"no pool named {name!r} (see `qumran pool-list`)")
        path = self.default_path(owner.uid)
        problem = await call(owner, lambda: fsops.make_dirs(str(path)))
        if problem is not None:
            raise InvalidState(
                f"cannot make the default pool {path} as uid {owner.uid}: "
                f"{problem.strerror}; define one with `qumran pool-define default DIR`"
            )
        await check_dir(owner, path)
        return self._add(owner.uid, name, path)

    async def define(self, owner: Owner, name: str, path_text: str) -> Pool:
        check_pool_name(name)
        path = check_dir_path(path_text)
        if self.find(owner.uid, name) is not None:
            raise InvalidState(
                f"a pool named {name!r} is defined already (`qumran pool-info {name}`); "
                f"undefine it first or choose another name"
            )
        taken = next((p for p in self.all() if p.path == path), None)
        if taken is not None:
            raise InvalidState(f"path: {path} is already a pool ({taken.name!r} of uid "
                               f"{taken.owner}); a directory is one pool")  # fmt: skip
        await check_dir(owner, path)
        return self._add(owner.uid, name, path)

    def _add(self, owner: int, name: str, path: Path) -> Pool:
        self.store.add_pool(PoolRecord(owner, name, str(path), time.time()))
        return Pool(owner, name, path)

    def remove(self, pool: Pool) -> None:
        self.store.remove_pool(pool.owner, pool.name)


async def check_dir(owner: Owner, path: Path) -> None:
    """Refuse ``path`` unless ``owner``, opening it with their own rights, finds a
    directory they own. A missing directory and one they may not open read the same."""
    found = await call(owner, lambda: fsops.dir_state(str(path)))
    if isinstance(found, OSError):
        if found.errno in _UNSEEN:
            raise InvalidArgument(
                f"path: {path} cannot be opened as a directory by uid {owner.uid} (missing, "
                "or no permission); create it, owned by you, first"
            )
        raise InvalidArgument(f"path: {path} cannot be used by uid {owner.uid}: {found.strerror}")
    if not stat.S_ISDIR(found.mode):
        raise InvalidArgument(f"path: {path} is not a directory")
    if found.uid != owner.uid:
        raise InvalidArgument(
            f"path: {path} belongs to uid {found.uid}, not to uid {owner.uid}: a pool's "
            "directory must be its owner's own"
        )


def gid_of(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid if uid else os.getegid()
