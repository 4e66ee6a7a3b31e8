"""The file operations of a pool, each a plain function run with the pool owner's rights.

qumrand runs these through :func:`qumran.drivers.asuser.run_as` (the credentials thread
of a root daemon): a user's pool directory, and every file in it, is only ever opened,
listed, linked or unlinked with that user's rights, never root's (ARCHITECTURE.md,
"Trust boundaries"). So these functions do nothing but the calls they are named for and
return plain values; every operation opens the pool directory first and works relative
to that descriptor, so one call sees one directory even if its path is swapped meanwhile.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

# Work in progress: ``.NAME.part-<16 hex digits>``, renamed (linked) into place when done.
PART = re.compile(r"\..+\.part-[0-9a-f]{16}", re.DOTALL)
VOLUME_MODE = 0o600


@dataclass(frozen=True)
class DirState:
    uid: int
    mode: int  # st_mode


@dataclass(frozen=True)
class Entry:
    name: str
    size: int  # st_size
    allocation: int  # bytes of blocks allocated


@dataclass(frozen=True)
class Space:
    capacity: int
    available: int  # for an unprivileged writer (f_bavail)


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def dir_state(path: str) -> DirState | OSError:
    """Who owns the directory ``path`` (followed as the caller follows it)."""
    try:
        fd = _open_dir(path)
    except OSError as exc:
        return exc
    try:
        st = os.fstat(fd)
        return DirState(st.st_uid, st.st_mode)
    finally:
        os.close(fd)


def make_dirs(path: str) -> OSError | None:
    """``path`` and its parents, 0700 where new (a default pool on first use)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        return exc
    return None


def scan(path: str, busy: frozenset[str]) -> tuple[list[Entry], list[str]]:
    """The volumes in ``path`` (regular files with visible names) and the leftovers of
    killed work removed (hidden ``.*.part-*`` files not in ``busy``)."""
    fd = _open_dir(path)
    volumes: list[Entry] = []
    removed: list[str] = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    if PART.fullmatch(entry.name) and entry.name not in busy:
                        try:
                            os.unlink(entry.name, dir_fd=fd)
                            removed.append(entry.name)
                        except FileNotFoundError:
                            pass
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    volumes.append(Entry(entry.name, st.st_size, st.st_blocks * 512))
    finally:
        os.close(fd)
    volumes.sort(key=lambda e: e.name)
    return volumes, removed


def entry(path: str, name: str) -> Entry | None:
    """The volume ``name`` in ``path``: None when there is no regular file by that name."""
    fd = _open_dir(path)
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    return Entry(name, st.st_size, st.st_blocks * 512)


def space(path: str) -> Space:
    fd = _open_dir(path)
    try:
        st = os.fstatvfs(fd)
    finally:
        os.close(fd)
    return Space(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


def publish(path: str, temp: str, name: str) -> bool:
    """Make the finished ``temp`` the volume ``name``: its data and mode on disk first,
    then linked in under its name (never over an existing one: False then, and ``temp``
    is removed), then the directory synced. A crash at any point leaves either no
    volume ``name`` or the whole of it; at worst a hidden leftover the next scan removes."""
    fd = _open_dir(path)
    try:
        file = os.open(temp, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=fd)
        try:
            os.fchmod(file, VOLUME_MODE)
            os.fsync(file)
        finally:
            os.close(file)
        try:
            os.link(temp, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
        except FileExistsError:
            os.unlink(temp, dir_fd=fd)
            return False
        os.unlink(temp, dir_fd=fd)
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


def remove(path: str, name: str) -> bool:
    """Unlink ``name`` in ``path``; False if it was not there."""
    fd = _open_dir(path)
    try:
        os.unlink(name, dir_fd=fd)
        os.fsync(fd)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def sync_file(path: str) -> None:
    """Flush a volume changed in place (after a resize)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_state(path: str) -> tuple[int, int] | OSError:
    """(st_mode, st_uid) of the file at ``path`` as opened for reading, or why not.
    O_NONBLOCK: a FIFO named here cannot hang the thread."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return exc
    try:
        st = os.fstat(fd)
        return st.st_mode, st.st_uid
    finally:
        os.close(fd)


def read_small(path: str, limit: int = 65536) -> bytes | OSError:
    """A small file's bytes (an image's ``image.json``), or why it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return OSError(0, "not a regular file")
        return os.read(fd, limit)
    finally:
        os.close(fd)
