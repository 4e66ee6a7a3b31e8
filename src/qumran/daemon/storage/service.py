"""The storage facade: what the HTTP API and the web manager call (``manager.storage``).

Every method takes the caller first and applies the same rules as VMs: a pool and its
volumes are their owner's; other users neither see nor touch them (the same "no such
pool" as for one that does not exist); root (and the user a per-user qumrand runs as)
sees and manages all, naming another user's pool with ``owner=UID``. Work on a pool runs
with its owner's rights (:mod:`.asowner`), off the event loop. Changes to one pool are
serialised by that pool's lock; listings run beside them (a copy in progress is a hidden
file a listing neither shows nor removes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pwd
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from qumran.client.schema import PoolInfo, VolumeInfo
from qumran.config.spec import VmSpec
from qumran.daemon.storage import fsops, qemuimg, volumes
from qumran.daemon.storage.asowner import StorageError, call
from qumran.daemon.storage.pools import (
    DEFAULT,
    Pool,
    Registry,
    check_dir,
    check_volume_name,
    gid_of,
)
from qumran.daemon.storage.volumes import Volume, Work
from qumran.daemon.store import Store
from qumran.drivers.base import Owner
from qumran.errors import InvalidArgument, InvalidState, PermissionDenied, QumranError
from qumran.images.cache import INFO_FILE, NAME_PATTERN

if TYPE_CHECKING:
    from qumran.daemon.domain import Domain
    from qumran.daemon.manager import Caller

log = logging.getLogger(__name__)

IMAGE_CACHE = Path(".cache/qumran/images")  # under a user's home, as `qumran image` keeps it


class Storage:
    def __init__(self, store: Store, state_dir: Path, domains: Mapping[str, Domain],
                 admin_uid: int) -> None:  # fmt: skip
        self.registry = Registry(store, state_dir)
        self.domains = domains  # the manager's: who uses which volume
        self.admin_uid = admin_uid
        self.work = Work()
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}

    # who acts as whom -------------------------------------------------------------------
    def _sees_all(self, caller: Caller) -> bool:
        return caller.uid in (0, self.admin_uid)

    def _owner(self, caller: Caller, uid: int | None) -> Owner:
        """Whose pools a request is about: the caller's own, or (root only) ``uid``'s."""
        if uid is None or uid == caller.uid:
            return Owner(caller.uid, caller.gid)
        if not self._sees_all(caller):
            raise PermissionDenied("owner: only root may use another user's pools")
        return Owner(uid, gid_of(uid))

    @contextlib.asynccontextmanager
    async def _changing(self, pool: Pool) -> AsyncIterator[None]:
        lock = self._locks.setdefault((pool.owner, pool.name), asyncio.Lock())
        async with lock:
            yield

    # pools ------------------------------------------------------------------------------
    async def pools(self, caller: Caller) -> list[PoolInfo]:
        """Every pool the caller may see (root: everyone's), its ``default`` made on first use."""
        with contextlib.suppress(QumranError):  # no home for it: the other pools still show
            await self.registry.get(Owner(caller.uid, caller.gid), DEFAULT)
        mine = [p for p in self.registry.all() if self._sees_all(caller) or p.owner == caller.uid]
        return [await self._pool_info(p) for p in mine]

    async def pool_info(self, caller: Caller, name: str, *, owner: int | None = None) -> PoolInfo:
        who = self._owner(caller, owner)
        return await self._pool_info(await self.registry.get(who, name))

    async def define_pool(self, caller: Caller, name: str, path: str) -> PoolInfo:
        """A directory of the caller's own (absolute, plain, owned by them) as pool ``name``.
        Nothing in it is changed; its regular files are its volumes from now on."""
        return await self._pool_info(
            await self.registry.define(Owner(caller.uid, caller.gid), name, path)
        )

    async def undefine_pool(self, caller: Caller, name: str, *, owner: int | None = None) -> None:
        """Forget the pool; its directory and files stay. Refused while a defined VM uses
        one of its volumes, and for ``default`` (it would only be made again)."""
        who = self._owner(caller, owner)
        pool = await self.registry.get(who, name)
        if name == DEFAULT:
            raise InvalidState("the default pool cannot be undefined (it is made again on use)")
        async with self._changing(pool):
            users = self._pool_users(pool)
            if users:
                raise InvalidState(
                    f"pool {name!r} holds volumes that defined VMs use ({_listed(users)}); "
                    "undefine those VMs or change their disks first"
                )
            self.registry.remove(pool)

    async def _pool_info(self, pool: Pool) -> PoolInfo:
        owner = Owner(pool.owner, gid_of(pool.owner))
        info: PoolInfo = {
            "name": pool.name, "owner": pool.owner, "path": str(pool.path), "usable": True,
            "problem": None, "capacity": 0, "available": 0, "allocation": 0, "volumes": 0,
        }  # fmt: skip
        try:
            await check_dir(owner, pool.path)
            room = await call(owner, lambda: fsops.space(str(pool.path)))
            entries = await volumes.scan(owner, pool, self.work)
        except (QumranError, OSError) as exc:
            problem = exc.message if isinstance(exc, QumranError) else str(exc.strerror)
            return info | {"usable": False, "problem": problem}
        return info | {
            "capacity": room.capacity,
            "available": room.available,
            "allocation": sum(e.allocation for e in entries),
            "volumes": len(entries),
        }

    # volumes ----------------------------------------------------------------------------
    async def _pool(self, caller: Caller, pool: str, owner: int | None) -> tuple[Owner, Pool]:
        who = self._owner(caller, owner)
        found = await self.registry.get(who, pool)
        await check_dir(who, found.path)  # still a directory of the owner's, every time
        return who, found

    async def volumes(
        self, caller: Caller, pool: str = DEFAULT, *, owner: int | None = None
    ) -> list[VolumeInfo]:
        """The volumes of the caller's pool ``pool`` (leftovers of killed work removed)."""
        who, found = await self._pool(caller, pool, owner)
        entries = await _scan(who, found, self.work)
        return [self._volume_info(await volumes.describe(who, found, e)) for e in entries]

    async def volume(
        self, caller: Caller, name: str, pool: str = DEFAULT, *, owner: int | None = None
    ) -> VolumeInfo:
        check_volume_name(name)
        who, found = await self._pool(caller, pool, owner)
        return self._volume_info(await volumes.get(who, found, name))

    async def create_volume(
        self, caller: Caller, name: str, size: int, *, pool: str = DEFAULT,
        format: str = "qcow2", backing: str | None = None, owner: int | None = None,
    ) -> VolumeInfo:  # fmt: skip
        """A new empty volume of ``size`` bytes; with ``backing`` (a volume of the same
        pool, an image of the owner's cache, or an absolute path of theirs) a qcow2
        overlay on it, recording the backing file's absolute path and format."""
        check_volume_name(name)
        volumes.check_size(size)
        if format not in qemuimg.FORMATS:
            raise InvalidArgument(f"format: {format!r} is not one of qcow2, raw")
        if backing is not None and format != "qcow2":
            raise InvalidArgument("backing: only a qcow2 volume can have a backing file")
        who, found = await self._pool(caller, pool, owner)
        async with self._changing(found):
            await volumes.absent(who, found, name)
            base = None if backing is None else await self._backing(who, found, backing)
            if base is not None and size < base[2]:
                raise InvalidArgument(
                    f"size: {size} bytes is smaller than the backing image's {base[2]}; an "
                    "overlay is at least as large as what it is on"
                )
            await volumes.check_space(who, found, size, "size")
            made = await volumes.create(who, found, self.work, name, size, format,
                                        None if base is None else base[:2])  # fmt: skip
        return self._volume_info(made)

    async def clone_volume(
        self, caller: Caller, source: str, new: str, *, pool: str = DEFAULT,
        owner: int | None = None,
    ) -> VolumeInfo:  # fmt: skip
        """A copy of ``source`` named ``new`` in the same pool (an overlay stays an
        overlay on the same backing file). The source is only read, and must not be in
        use by a running VM (its data would be changing under the copy)."""
        check_volume_name(source, "source")
        check_volume_name(new, "new")
        who, found = await self._pool(caller, pool, owner)
        async with self._changing(found):
            src = await volumes.get(who, found, source)
            running = [d.name for d in self._users(src) if d.active]
            if running:
                raise InvalidState(
                    f"volume {source!r} is in use by running VM {_listed(running)}; shut it "
                    "down before cloning its disk"
                )
            await volumes.absent(who, found, new)
            await volumes.check_space(who, found, src.capacity, "source")
            info = qemuimg.ImageInfo(src.format, src.capacity, src.backing, src.backing_format,
                                     None)  # fmt: skip
            made = await volumes.copy(who, found, self.work, src.path, info, new)
        return self._volume_info(made)

    async def resize_volume(
        self, caller: Caller, name: str, size: int, *, pool: str = DEFAULT,
        owner: int | None = None,
    ) -> VolumeInfo:  # fmt: skip
        """Grow ``name`` to ``size`` bytes, in place. Refused for a volume a defined VM
        uses (its guest would see the disk change under it) and for shrinking."""
        check_volume_name(name)
        volumes.check_size(size)
        who, found = await self._pool(caller, pool, owner)
        async with self._changing(found):
            vol = await volumes.get(who, found, name)
            self._refuse_used(vol, "resized")
            if size < vol.capacity:
                raise InvalidArgument(
                    f"size: {size} bytes is less than volume {name!r}'s {vol.capacity}: "
                    "shrinking would cut off the end of the disk; volumes only grow"
                )
            if size == vol.capacity:
                return self._volume_info(vol)
            await volumes.check_space(who, found, size - vol.capacity, "size")
            return self._volume_info(await volumes.resize(who, vol, size))

    async def delete_volume(
        self, caller: Caller, name: str, *, pool: str = DEFAULT, owner: int | None = None
    ) -> None:
        """Remove ``name``'s file. Refused while a defined VM uses it, or while another
        volume of the pool is an overlay on it."""
        check_volume_name(name)
        who, found = await self._pool(caller, pool, owner)
        async with self._changing(found):
            vol = await volumes.get(who, found, name)
            self._refuse_used(vol, "deleted")
            for entry in await _scan(who, found, self.work):
                if entry.name == name:
                    continue
                other = await volumes.describe(who, found, entry)
                if other.backing == str(vol.path):
                    raise InvalidState(
                        f"volume {name!r} is the backing file of volume {entry.name!r}; "
                        f"delete {entry.name!r} first"
                    )
            await volumes.delete(who, vol)

    async def import_volume(
        self, caller: Caller, name: str, file: str, *, pool: str = DEFAULT,
        owner: int | None = None,
    ) -> VolumeInfo:  # fmt: skip
        """A copy of the owner's disk image ``file`` (qcow2 or raw, self-contained) as the
        new volume ``name``; ``file`` is read with the owner's rights, never written."""
        check_volume_name(name)
        if not file.startswith("/") or "\0" in file:
            raise InvalidArgument("file: give the image's absolute path")
        who, found = await self._pool(caller, pool, owner)
        path = Path(file)
        async with self._changing(found):
            await volumes.absent(who, found, name)
            await volumes.readable_file(who, path, f"file: {file}", own=False)
            info = await qemuimg.info(who, path, what=f"file: {file}")
            if info.format not in qemuimg.FORMATS:
                raise InvalidArgument(f"file: {file} is a {info.format} image; qumran takes "
                                      "qcow2 or raw (convert it with qemu-img first)")  # fmt: skip
            if info.backing or info.data_file:
                raise InvalidArgument(
                    f"file: {file} depends on another file ({info.backing or info.data_file}); "
                    "import a standalone copy (`qemu-img convert -O qcow2 FILE NEW`)"
                )
            if info.format == "raw" and info.capacity % volumes.SECTOR:
                raise InvalidArgument(
                    f"file: {file} is not a disk image ({info.capacity} bytes is not a whole "
                    "number of 512-byte sectors)"
                )
            await volumes.check_space(who, found, info.capacity, "file")
            made = await volumes.copy(who, found, self.work, path, info, name)
        return self._volume_info(made)

    # who uses what ----------------------------------------------------------------------
    def _users(self, vol: Volume) -> list[Domain]:
        """The VMs of the volume's owner whose definition (or the one saved for their next
        start) names it, by volume or by path."""
        return [d for d in self.domains.values()
                if d.owner == vol.pool.owner and _names(d, vol.pool, vol.name)]  # fmt: skip

    def _pool_users(self, pool: Pool) -> list[str]:
        return sorted(d.name for d in self.domains.values()
                      if d.owner == pool.owner and _names(d, pool, None))  # fmt: skip

    def _refuse_used(self, vol: Volume, verb: str) -> None:
        users = sorted(d.name for d in self._users(vol))
        if users:
            raise InvalidState(
                f"volume {vol.name!r} is used by VM {_listed(users)}; it cannot be {verb} "
                f"while that VM is defined with it (undefine it, or `qumran edit` its disks)"
            )

    def _volume_info(self, vol: Volume) -> VolumeInfo:
        return {
            "name": vol.name, "pool": vol.pool.name, "owner": vol.pool.owner,
            "path": str(vol.path), "format": vol.format, "capacity": vol.capacity,
            "allocation": vol.allocation, "backing": vol.backing,
            "backing_format": vol.backing_format,
            "used_by": sorted(d.name for d in self._users(vol)),
        }  # fmt: skip

    # backing files ----------------------------------------------------------------------
    async def _backing(self, who: Owner, pool: Pool, text: str) -> tuple[Path, str, int]:
        """(path, format, virtual size) of the backing ``text`` names: an absolute path,
        else a volume of ``pool``, else an image of the owner's cache. Whatever is missing
        or not the owner's gets one answer, so it tells nothing about other users' files."""
        unseen = InvalidArgument(
            f"backing: {text!r} is not a volume of pool {pool.name!r}, an image of yours "
            "or a file of yours (missing, or not yours); see `qumran vol-list` and "
            "`qumran image list`"
        )
        path = await self._backing_path(who, pool, text)
        if path is None:
            raise unseen
        try:
            await volumes.readable_file(who, path, "backing", own=True)
            info = await qemuimg.info(who, path, what=f"backing: {text!r}")
            await qemuimg.check_chain(who, path, what=f"backing: {text!r}")
        except InvalidArgument:
            raise unseen from None
        if info.format not in qemuimg.FORMATS:
            raise InvalidArgument(f"backing: {text!r} is a {info.format} image, not qcow2 or raw")
        return path, info.format, info.capacity

    async def _backing_path(self, who: Owner, pool: Pool, text: str) -> Path | None:
        if text.startswith("/"):
            return Path(text) if "\0" not in text else None
        with contextlib.suppress(InvalidArgument):
            check_volume_name(text)
            if await call(who, lambda: fsops.entry(str(pool.path), text)) is not None:
                return pool.volume_path(text)
        if not NAME_PATTERN.fullmatch(text):
            return None
        try:
            home = Path(pwd.getpwuid(who.uid).pw_dir)
        except KeyError:
            return None
        entry = home / IMAGE_CACHE / text
        raw = await call(who, lambda: fsops.read_small(str(entry / INFO_FILE)))
        if isinstance(raw, OSError):
            return None
        try:
            disk = json.loads(raw)["disk"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(disk, str) or "/" in disk or disk.startswith("."):
            return None
        return entry / disk

    # the daemon's start ------------------------------------------------------------------
    async def clean_leftovers(self) -> None:
        """Remove what killed work left in every pool (as each pool's owner)."""
        for pool in self.registry.all():
            owner = Owner(pool.owner, gid_of(pool.owner))
            try:
                await _scan(owner, pool, self.work)
            except (QumranError, OSError) as exc:
                log.warning("pool %s of uid %d: cannot look for leftovers: %s", pool.name,
                            pool.owner, exc)  # fmt: skip


async def _scan(who: Owner, pool: Pool, work: Work) -> list[fsops.Entry]:
    try:
        return await volumes.scan(who, pool, work)
    except OSError as exc:
        raise StorageError(f"pool {pool.name!r} ({pool.path}) cannot be read by uid {who.uid}: "
                           f"{exc.strerror}") from None  # fmt: skip


def _names(dom: Domain, pool: Pool, volume: str | None) -> bool:
    """Whether ``dom``'s definitions name a volume of ``pool`` (``volume``, or any)."""
    specs: Iterable[VmSpec | None] = (dom.spec, dom.pending)
    for spec in specs:
        if spec is None:
            continue
        for disk in spec.disks:
            if disk.volume is not None:
                named = disk.pool == pool.name and volume in (None, disk.volume)
            else:  # a path into the pool names its volume too
                path = disk.host_path
                named = path.parent == pool.path and volume in (None, path.name)
            if named:
                return True
    return False


def _listed(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)
