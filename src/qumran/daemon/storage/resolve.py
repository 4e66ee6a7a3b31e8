"""Disks named by volume, turned into the path and format a driver opens.

A definition may say ``disks: [{volume: web1}]`` (pool ``default`` unless ``pool:`` says
otherwise). The stored definition keeps the volume; the daemon resolves it for the VM's
owner at define (so a wrong name is refused at once) and again at every start (the file
may have changed), and drivers only ever see a :class:`Disk` with a path. The format is
what qemu-img reads in the volume, as the owner; a format given in the definition must
match it.
"""

from __future__ import annotations

from typing import Literal

from qumran.config.spec import Disk, VmSpec
from qumran.daemon.storage import qemuimg
from qumran.daemon.storage.pools import Registry, check_dir
from qumran.daemon.storage.volumes import get
from qumran.drivers.base import Owner
from qumran.errors import InvalidArgument, NotFound, QumranError


async def resolve(registry: Registry, spec: VmSpec, owner: Owner) -> VmSpec:
    """``spec`` with each volume disk replaced by its file and real format."""
    if all(disk.volume is None for disk in spec.disks):
        return spec
    disks = [await _disk(registry, i, disk, owner) for i, disk in enumerate(spec.disks)]
    return spec.model_copy(update={"disks": tuple(disks)})


async def _disk(registry: Registry, index: int, disk: Disk, owner: Owner) -> Disk:
    if disk.volume is None:
        return disk
    where = f"disks[{index}]"
    try:
        pool = await registry.get(owner, disk.pool)
        await check_dir(owner, pool.path)
    except NotFound:
        raise InvalidArgument(
            f"{where}.pool: uid {owner.uid} has no pool named {disk.pool!r} (see "
            "`qumran pool-list`)"
        ) from None
    except QumranError as exc:
        raise InvalidArgument(f"{where}.pool: {exc.message}") from None
    try:
        volume = await get(owner, pool, disk.volume)
    except NotFound:
        raise InvalidArgument(
            f"{where}.volume: no volume {disk.volume!r} in pool {pool.name!r} of uid "
            f"{owner.uid} (see `qumran vol-list {pool.name}`)"
        ) from None
    if volume.format not in qemuimg.FORMATS:
        raise InvalidArgument(f"{where}.volume: {disk.volume!r} is a {volume.format} image; "
                              "a VM's disk is qcow2 or raw")  # fmt: skip
    if disk.format is not None and disk.format != volume.format:
        raise InvalidArgument(
            f"{where}.format: the definition says {disk.format} but volume {disk.volume!r} "
            f"is {volume.format}; fix the format or leave it out"
        )
    fmt: Literal["raw", "qcow2"] = "qcow2" if volume.format == "qcow2" else "raw"
    return Disk(path=volume.path, format=fmt, readonly=disk.readonly)
