"""Volumes: the files of one pool directory, made and changed with its owner's rights.

The directory is the truth (as libvirt's directory pools are refreshed from theirs): a
volume is a regular file with a visible name; its format, size and backing file are what
``qemu-img info`` reads in it. Nothing about a volume is kept in the store.

Crash safety: create, clone and import write a hidden ``.NAME.part-<random>`` and link
it in under NAME only when it is complete and synced, so a killed qumrand leaves either
the whole volume or none (and a leftover that the next scan removes: every listing, and
qumrand's start). The source of a clone or an import is only ever read. A resize works in
place (``qemu-img resize``, as libvirt does): it only grows a volume no VM uses, after
every check has passed, and qemu-img writes a qcow2's new size into its header last.
"""

from __future__ import annotations

import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from qumran.config.units import format_size
from qumran.daemon.storage import fsops, qemuimg
from qumran.daemon.storage.asowner import call
from qumran.daemon.storage.pools import Pool
from qumran.drivers.base import Owner
from qumran.drivers.checks import UNSEEN_ERRNOS
from qumran.errors import AlreadyExists, InvalidArgument, NotFound

SECTOR = 512


@dataclass(frozen=True)
class Volume:
    pool: Pool
    name: str
    format: str
    capacity: int
    allocation: int
    backing: str | None
    backing_format: str | None

    @property
    def path(self) -> Path:
        return self.pool.volume_path(self.name)


class Work:
    """The hidden names being written now: a scan must not take them for leftovers."""

    def __init__(self) -> None:
        self.busy: set[str] = set()

    def temp_name(self, name: str) -> str:
        temp = f".{name}.part-{secrets.token_hex(8)}"
        self.busy.add(temp)
        return temp


async def scan(owner: Owner, pool: Pool, work: Work) -> list[fsops.Entry]:
    busy = frozenset(work.busy)
    entries, _removed = await call(owner, lambda: fsops.scan(str(pool.path), busy))
    return entries


async def describe(owner: Owner, pool: Pool, entry: fsops.Entry) -> Volume:
    found = await qemuimg.info(owner, pool.volume_path(entry.name), what=f"volume {entry.name!r}")
    return Volume(pool, entry.name, found.format, found.capacity, entry.allocation,
                  found.backing, found.backing_format)  # fmt: skip


async def get(owner: Owner, pool: Pool, name: str) -> Volume:
    found = await call(owner, lambda: fsops.entry(str(pool.path), name))
    if found is None:
        raise NotFound(
            f"no volume named {name!r} in pool {pool.name!r} (see `qumran vol-list {pool.name}`)"
        )
    return await describe(owner, pool, found)


async def absent(owner: Owner, pool: Pool, name: str) -> None:
    if await call(owner, lambda: fsops.entry(str(pool.path), name)) is not None:
        raise AlreadyExists(
            f"a volume named {name!r} is in pool {pool.name!r} already; choose another name "
            f"or remove it with `qumran vol-delete {name}`"
        )


def check_size(size: int, what: str = "size") -> int:
    if size <= 0:
        raise InvalidArgument(f"{what}: a volume needs a size of at least 512 bytes")
    if size % SECTOR:
        raise InvalidArgument(
            f"{what}: {size} bytes is not a whole number of 512-byte sectors; "
            f"use {size // SECTOR * SECTOR + SECTOR} or a size with a unit such as 8G"
        )
    return size


async def check_space(owner: Owner, pool: Pool, needed: int, what: str) -> None:
    """Refuse ``needed`` bytes more than the pool's file system has free. The rule, for
    both formats: a volume must be able to fill to its virtual size (libvirt checks its
    allocation); several volumes together may still overcommit, as thin ones do."""
    room = await call(owner, lambda: fsops.space(str(pool.path)))
    if needed > room.available:
        raise InvalidArgument(
            f"{what}: {format_size(needed)} ({needed} bytes) is more than pool "
            f"{pool.name!r} has free ({room.available} bytes at {pool.path})"
        )


async def publish(owner: Owner, pool: Pool, work: Work, temp: str, name: str) -> None:
    try:
        done = await call(owner, lambda: fsops.publish(str(pool.path), temp, name))
    finally:
        work.busy.discard(temp)
    if not done:
        raise AlreadyExists(f"a volume named {name!r} appeared in pool {pool.name!r} meanwhile")


async def discard(owner: Owner, pool: Pool, work: Work, temp: str) -> None:
    try:
        await call(owner, lambda: fsops.remove(str(pool.path), temp))
    finally:
        work.busy.discard(temp)


async def create(
    owner: Owner, pool: Pool, work: Work, name: str, size: int, fmt: str,
    backing: tuple[Path, str] | None,
) -> Volume:  # fmt: skip
    temp = work.temp_name(name)
    try:
        await qemuimg.create(owner, pool.volume_path(temp), fmt, size, backing,
                             what=f"creating volume {name!r}")  # fmt: skip
    except BaseException:
        await discard(owner, pool, work, temp)
        raise
    await publish(owner, pool, work, temp, name)
    return await get(owner, pool, name)


async def copy(owner: Owner, pool: Pool, work: Work, source: Path, info: qemuimg.ImageInfo,
               name: str) -> Volume:  # fmt: skip
    """``source`` copied (sparse, same format) as the new volume ``name``."""
    temp = work.temp_name(name)
    backing = None
    if info.backing:
        backing = (info.backing, info.backing_format or "raw")
    try:
        await qemuimg.convert(owner, source, pool.volume_path(temp), info.format, backing,
                              what=f"copying to volume {name!r}")  # fmt: skip
    except BaseException:
        await discard(owner, pool, work, temp)
        raise
    await publish(owner, pool, work, temp, name)
    return await get(owner, pool, name)


async def resize(owner: Owner, volume: Volume, size: int) -> Volume:
    await qemuimg.resize(owner, volume.path, volume.format, size)
    await call(owner, lambda: fsops.sync_file(str(volume.path)))
    return await get(owner, volume.pool, volume.name)


async def delete(owner: Owner, volume: Volume) -> None:
    if not await call(owner, lambda: fsops.remove(str(volume.pool.path), volume.name)):
        raise NotFound(f"no volume named {volume.name!r} in pool {volume.pool.name!r}")


async def readable_file(owner: Owner, path: Path, what: str, *, own: bool) -> None:
    """Refuse unless ``owner``, with their own rights, can read the regular file ``path``
    (and, with ``own``, owns it). Missing, unreadable and not theirs read the same."""
    found = await call(owner, lambda: fsops.file_state(str(path)))
    unseen = isinstance(found, OSError) and found.errno in UNSEEN_ERRNOS
    if unseen or (own and not isinstance(found, OSError) and found[1] != owner.uid
                  and owner.uid != 0):  # fmt: skip
        raise InvalidArgument(
            f"{what} cannot be read by uid {owner.uid} (missing, or not theirs); give a "
            "file of your own"
        )
    if isinstance(found, OSError):
        raise InvalidArgument(f"{what} cannot be read by uid {owner.uid}: {found.strerror}")
    if not stat.S_ISREG(found[0]):
        raise InvalidArgument(f"{what} is not a regular file")
