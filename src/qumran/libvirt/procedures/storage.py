"""Storage: Qumran's pools (directories) and volumes (image files) as libvirt's ``dir``
pools and ``file`` volumes (docs/storage.md).

Every call goes through ``manager.storage`` as the connection's caller, the same methods
and rules as the HTTP API: a user sees and changes only their own pools; root sees every
user's. Pools are per owner, so two users may both have ``default``: a connection names
its caller's own pools as they are, and (root) another user's as ``NAME@UID`` ('@' is
never in a pool name). A pool's uuid is derived from its owner and name.

A Qumran pool is a directory, so it is always "running" while its directory is usable
(libvirt: inaccessible when not), always persistent and autostarted; it cannot be
stopped. Volumes are keyed by their path, as a dir pool's are.
"""

from __future__ import annotations

import contextlib
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

from qumran.client.schema import PoolInfo, VolumeInfo
from qumran.config.xmlread import XmlInvalid, XmlUnsupported
from qumran.errors import InvalidState, NotFound
from qumran.libvirt import constants as c
from qumran.libvirt import storagexml
from qumran.libvirt.errors import RpcError
from qumran.libvirt.protocol import remote as r
from qumran.libvirt.server import Connection, handles

# --- names and lookups ----------------------------------------------------------------------


def wire_name(conn: Connection, info: PoolInfo) -> str:
    own = info["owner"] == conn.caller.uid
    return info["name"] if own else f"{info['name']}@{info['owner']}"


def wire(conn: Connection, info: PoolInfo) -> r.remote_nonnull_storage_pool:
    uuid = uuidlib.UUID(storagexml.pool_uuid(info["owner"], info["name"]))
    return r.remote_nonnull_storage_pool(wire_name(conn, info), uuid.bytes)


def _split(name: str) -> tuple[str, int | None]:
    """'fast' -> ('fast', None: the caller's); 'fast@1000' -> ('fast', 1000)."""
    pool, at, owner = name.partition("@")
    if not at:
        return name, None
    if not owner.isdigit():
        raise _no_pool(name)
    return pool, int(owner)


def _no_pool(name: str) -> RpcError:
    return RpcError(c.VIR_ERR_NO_STORAGE_POOL,
                    f"Storage pool not found: no storage pool with matching name '{name}'",
                    c.VIR_FROM_STORAGE)  # fmt: skip


@contextlib.contextmanager
def _missing_is(error: RpcError) -> Iterator[None]:
    """Qumran's "no such pool/volume" as libvirt's code for it (not a domain's)."""
    try:
        yield
    except NotFound:
        raise error from None


async def pool(conn: Connection, ref: r.remote_nonnull_storage_pool | str) -> PoolInfo:
    name = ref if isinstance(ref, str) else ref.name
    pool_name, owner = _split(name)
    with _missing_is(_no_pool(name)):
        return await conn.manager.storage.pool_info(conn.caller, pool_name, owner=owner)


async def _pools(conn: Connection) -> list[PoolInfo]:
    return await conn.manager.storage.pools(conn.caller)


def vol_wire(conn: Connection, info: PoolInfo, vol: VolumeInfo) -> r.remote_nonnull_storage_vol:
    return r.remote_nonnull_storage_vol(wire_name(conn, info), vol["name"], vol["path"])


def _no_vol(what: str) -> RpcError:
    return RpcError(c.VIR_ERR_NO_STORAGE_VOL,
                    f"Storage volume not found: no storage vol with matching {what}",
                    c.VIR_FROM_STORAGE)  # fmt: skip


async def volume(conn: Connection, ref: r.remote_nonnull_storage_vol) -> VolumeInfo:
    pool_name, owner = _split(ref.pool)
    with _missing_is(_no_vol(f"name '{ref.name}' in pool '{ref.pool}'")):
        await pool(conn, ref.pool)
        return await conn.manager.storage.volume(conn.caller, ref.name, pool_name, owner=owner)


async def _by_path(conn: Connection, path: str) -> tuple[PoolInfo, VolumeInfo]:
    """The caller's volume whose file is ``path`` (a volume's key is its path)."""
    wanted = Path(path)
    for info in await _pools(conn):
        if info["usable"] and Path(info["path"]) == wanted.parent:
            with contextlib.suppress(NotFound):
                vol = await conn.manager.storage.volume(conn.caller, wanted.name, info["name"],
                                                        owner=info["owner"])  # fmt: skip
                return info, vol
    raise _no_vol(f"path '{path}'")


def _xml_error(exc: XmlInvalid | XmlUnsupported) -> RpcError:
    if isinstance(exc, XmlUnsupported):
        return RpcError(c.VIR_ERR_CONFIG_UNSUPPORTED, f"unsupported configuration: {exc.message}",
                        c.VIR_FROM_STORAGE)  # fmt: skip
    return RpcError(c.VIR_ERR_XML_ERROR, f"XML error: {exc.message}", c.VIR_FROM_XML)


# --- listing ---------------------------------------------------------------------------------


def _listed(info: PoolInfo, flags: int) -> bool:
    groups = (
        (c.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE, info["usable"],
         c.VIR_CONNECT_LIST_STORAGE_POOLS_INACTIVE, not info["usable"]),
        (c.VIR_CONNECT_LIST_STORAGE_POOLS_PERSISTENT, True,
         c.VIR_CONNECT_LIST_STORAGE_POOLS_TRANSIENT, False),
        (c.VIR_CONNECT_LIST_STORAGE_POOLS_AUTOSTART, True,
         c.VIR_CONNECT_LIST_STORAGE_POOLS_NO_AUTOSTART, False),
    )  # fmt: skip
    for yes_flag, yes, no_flag, no in groups:
        wanted = flags & (yes_flag | no_flag)
        if wanted and not ((flags & yes_flag and yes) or (flags & no_flag and no)):
            return False
    types = flags & ~0x3F  # the pool type flags: every Qumran pool is a dir pool
    return not types or bool(types & c.VIR_CONNECT_LIST_STORAGE_POOLS_DIR)


@handles(r.REMOTE_PROC_CONNECT_LIST_ALL_STORAGE_POOLS)
async def list_all(
    conn: Connection, args: r.remote_connect_list_all_storage_pools_args
) -> r.remote_connect_list_all_storage_pools_ret:
    found = [wire(conn, p) for p in await _pools(conn) if _listed(p, args.flags)]
    found = found[: r.REMOTE_STORAGE_POOL_LIST_MAX]
    return r.remote_connect_list_all_storage_pools_ret(found if args.need_results else [],
                                                       len(found))  # fmt: skip


@handles(r.REMOTE_PROC_CONNECT_NUM_OF_STORAGE_POOLS)
async def num_active(conn: Connection, _: None) -> r.remote_connect_num_of_storage_pools_ret:
    return r.remote_connect_num_of_storage_pools_ret(
        sum(1 for p in await _pools(conn) if p["usable"]))


@handles(r.REMOTE_PROC_CONNECT_LIST_STORAGE_POOLS)
async def list_active(
    conn: Connection, args: r.remote_connect_list_storage_pools_args
) -> r.remote_connect_list_storage_pools_ret:
    names = [wire_name(conn, p) for p in await _pools(conn) if p["usable"]]
    return r.remote_connect_list_storage_pools_ret(names[: max(0, args.maxnames)])


@handles(r.REMOTE_PROC_CONNECT_NUM_OF_DEFINED_STORAGE_POOLS)
async def num_inactive(
    conn: Connection, _: None
) -> r.remote_connect_num_of_defined_storage_pools_ret:
    return r.remote_connect_num_of_defined_storage_pools_ret(
        sum(1 for p in await _pools(conn) if not p["usable"]))


@handles(r.REMOTE_PROC_CONNECT_LIST_DEFINED_STORAGE_POOLS)
async def list_inactive(
    conn: Connection, args: r.remote_connect_list_defined_storage_pools_args
) -> r.remote_connect_list_defined_storage_pools_ret:
    names = [wire_name(conn, p) for p in await _pools(conn) if not p["usable"]]
    return r.remote_connect_list_defined_storage_pools_ret(names[: max(0, args.maxnames)])


# --- one pool --------------------------------------------------------------------------------


@handles(r.REMOTE_PROC_STORAGE_POOL_LOOKUP_BY_NAME)
async def by_name(
    conn: Connection, args: r.remote_storage_pool_lookup_by_name_args
) -> r.remote_storage_pool_lookup_by_name_ret:
    return r.remote_storage_pool_lookup_by_name_ret(wire(conn, await pool(conn, args.name)))


@handles(r.REMOTE_PROC_STORAGE_POOL_LOOKUP_BY_UUID)
async def by_uuid(
    conn: Connection, args: r.remote_storage_pool_lookup_by_uuid_args
) -> r.remote_storage_pool_lookup_by_uuid_ret:
    uuid = str(uuidlib.UUID(bytes=args.uuid))
    for info in await _pools(conn):
        if storagexml.pool_uuid(info["owner"], info["name"]) == uuid:
            return r.remote_storage_pool_lookup_by_uuid_ret(wire(conn, info))
    raise RpcError(c.VIR_ERR_NO_STORAGE_POOL,
                   f"Storage pool not found: no storage pool with matching uuid '{uuid}'",
                   c.VIR_FROM_STORAGE)  # fmt: skip


@handles(r.REMOTE_PROC_STORAGE_POOL_LOOKUP_BY_TARGET_PATH)
async def by_target_path(
    conn: Connection, args: r.remote_storage_pool_lookup_by_target_path_args
) -> r.remote_storage_pool_lookup_by_target_path_ret:
    for info in await _pools(conn):
        if Path(info["path"]) == Path(args.path):
            return r.remote_storage_pool_lookup_by_target_path_ret(wire(conn, info))
    raise RpcError(c.VIR_ERR_NO_STORAGE_POOL,
                   f"Storage pool not found: no storage pool with matching target path "
                   f"'{args.path}'", c.VIR_FROM_STORAGE)  # fmt: skip


@handles(r.REMOTE_PROC_STORAGE_POOL_LOOKUP_BY_VOLUME)
async def by_volume(
    conn: Connection, args: r.remote_storage_pool_lookup_by_volume_args
) -> r.remote_storage_pool_lookup_by_volume_ret:
    await volume(conn, args.vol)
    return r.remote_storage_pool_lookup_by_volume_ret(wire(conn, await pool(conn, args.vol.pool)))


@handles(r.REMOTE_PROC_STORAGE_POOL_GET_INFO)
async def get_info(
    conn: Connection, args: r.remote_storage_pool_get_info_args
) -> r.remote_storage_pool_get_info_ret:
    info = await pool(conn, args.pool)
    state = c.VIR_STORAGE_POOL_RUNNING if info["usable"] else c.VIR_STORAGE_POOL_INACCESSIBLE
    return r.remote_storage_pool_get_info_ret(state, info["capacity"], info["allocation"],
                                              info["available"])  # fmt: skip


@handles(r.REMOTE_PROC_STORAGE_POOL_GET_XML_DESC)
async def dumpxml(
    conn: Connection, args: r.remote_storage_pool_get_xml_desc_args
) -> r.remote_storage_pool_get_xml_desc_ret:
    info = await pool(conn, args.pool)
    return r.remote_storage_pool_get_xml_desc_ret(storagexml.pool_xml(info, wire_name(conn, info)))


@handles(r.REMOTE_PROC_STORAGE_POOL_GET_AUTOSTART)
async def get_autostart(
    conn: Connection, args: r.remote_storage_pool_get_autostart_args
) -> r.remote_storage_pool_get_autostart_ret:
    await pool(conn, args.pool)
    return r.remote_storage_pool_get_autostart_ret(1)  # a directory is there from the start


@handles(r.REMOTE_PROC_STORAGE_POOL_IS_ACTIVE)
async def is_active(
    conn: Connection, args: r.remote_storage_pool_is_active_args
) -> r.remote_storage_pool_is_active_ret:
    return r.remote_storage_pool_is_active_ret(int((await pool(conn, args.pool))["usable"]))


@handles(r.REMOTE_PROC_STORAGE_POOL_IS_PERSISTENT)
async def is_persistent(
    conn: Connection, args: r.remote_storage_pool_is_persistent_args
) -> r.remote_storage_pool_is_persistent_ret:
    await pool(conn, args.pool)
    return r.remote_storage_pool_is_persistent_ret(1)


@handles(r.REMOTE_PROC_STORAGE_POOL_REFRESH)
async def refresh(conn: Connection, args: r.remote_storage_pool_refresh_args) -> None:
    await pool(conn, args.pool)  # nothing to do: every listing reads the directory afresh


@handles(r.REMOTE_PROC_STORAGE_POOL_CREATE)
async def start(conn: Connection, args: r.remote_storage_pool_create_args) -> None:
    info = await pool(conn, args.pool)
    if info["usable"]:
        raise InvalidState(f"storage pool '{args.pool.name}' is already active")
    raise RpcError(c.VIR_ERR_OPERATION_FAILED,
                   f"operation failed: storage pool '{args.pool.name}' cannot be used: "
                   f"{info['problem']}", c.VIR_FROM_STORAGE)  # fmt: skip


@handles(r.REMOTE_PROC_STORAGE_POOL_DESTROY)
async def stop(conn: Connection, args: r.remote_storage_pool_destroy_args) -> None:
    await pool(conn, args.pool)
    raise RpcError(c.VIR_ERR_OPERATION_INVALID,
                   f"Requested operation is not valid: storage pool '{args.pool.name}' is a "
                   "directory, always in use: Qumran's pools are not stopped "
                   "(pool-undefine forgets it)", c.VIR_FROM_STORAGE)  # fmt: skip


@handles(r.REMOTE_PROC_STORAGE_POOL_DEFINE_XML)
async def define(
    conn: Connection, args: r.remote_storage_pool_define_xml_args
) -> r.remote_storage_pool_define_xml_ret:
    try:
        doc = storagexml.parse_pool(args.xml)
    except (XmlInvalid, XmlUnsupported) as exc:
        raise _xml_error(exc) from None
    if doc.uuid not in (None, storagexml.pool_uuid(conn.caller.uid, doc.name)):
        raise RpcError(c.VIR_ERR_CONFIG_UNSUPPORTED,
                       "unsupported configuration: pool/uuid: a Qumran pool's uuid comes from "
                       "its owner and name; remove it", c.VIR_FROM_STORAGE)  # fmt: skip
    info = await conn.manager.storage.define_pool(conn.caller, doc.name, doc.path)
    return r.remote_storage_pool_define_xml_ret(wire(conn, info))


@handles(r.REMOTE_PROC_STORAGE_POOL_UNDEFINE)
async def undefine(conn: Connection, args: r.remote_storage_pool_undefine_args) -> None:
    info = await pool(conn, args.pool)
    await conn.manager.storage.undefine_pool(conn.caller, info["name"], owner=info["owner"])


# --- volumes ---------------------------------------------------------------------------------


async def _volumes(conn: Connection, ref: r.remote_nonnull_storage_pool
                   ) -> tuple[PoolInfo, list[VolumeInfo]]:  # fmt: skip
    info = await pool(conn, ref)
    vols = await conn.manager.storage.volumes(conn.caller, info["name"], owner=info["owner"])
    return info, vols


@handles(r.REMOTE_PROC_STORAGE_POOL_LIST_ALL_VOLUMES)
async def list_volumes(
    conn: Connection, args: r.remote_storage_pool_list_all_volumes_args
) -> r.remote_storage_pool_list_all_volumes_ret:
    info, vols = await _volumes(conn, args.pool)
    found = [vol_wire(conn, info, v) for v in vols][: r.REMOTE_STORAGE_VOL_LIST_MAX]
    return r.remote_storage_pool_list_all_volumes_ret(found if args.need_results else [],
                                                      len(found))  # fmt: skip


@handles(r.REMOTE_PROC_STORAGE_POOL_NUM_OF_VOLUMES)
async def num_volumes(
    conn: Connection, args: r.remote_storage_pool_num_of_volumes_args
) -> r.remote_storage_pool_num_of_volumes_ret:
    return r.remote_storage_pool_num_of_volumes_ret(len((await _volumes(conn, args.pool))[1]))


@handles(r.REMOTE_PROC_STORAGE_POOL_LIST_VOLUMES)
async def volume_names(
    conn: Connection, args: r.remote_storage_pool_list_volumes_args
) -> r.remote_storage_pool_list_volumes_ret:
    names = [v["name"] for v in (await _volumes(conn, args.pool))[1]]
    return r.remote_storage_pool_list_volumes_ret(names[: max(0, args.maxnames)])


@handles(r.REMOTE_PROC_STORAGE_VOL_LOOKUP_BY_NAME)
async def vol_by_name(
    conn: Connection, args: r.remote_storage_vol_lookup_by_name_args
) -> r.remote_storage_vol_lookup_by_name_ret:
    info = await pool(conn, args.pool)
    with _missing_is(_no_vol(f"name '{args.name}' in pool '{args.pool.name}'")):
        vol = await conn.manager.storage.volume(conn.caller, args.name, info["name"],
                                                owner=info["owner"])  # fmt: skip
    return r.remote_storage_vol_lookup_by_name_ret(vol_wire(conn, info, vol))


@handles(r.REMOTE_PROC_STORAGE_VOL_LOOKUP_BY_PATH)
async def vol_by_path(
    conn: Connection, args: r.remote_storage_vol_lookup_by_path_args
) -> r.remote_storage_vol_lookup_by_path_ret:
    return r.remote_storage_vol_lookup_by_path_ret(vol_wire(conn, *await _by_path(conn, args.path)))


@handles(r.REMOTE_PROC_STORAGE_VOL_LOOKUP_BY_KEY)
async def vol_by_key(
    conn: Connection, args: r.remote_storage_vol_lookup_by_key_args
) -> r.remote_storage_vol_lookup_by_key_ret:
    return r.remote_storage_vol_lookup_by_key_ret(vol_wire(conn, *await _by_path(conn, args.key)))


@handles(r.REMOTE_PROC_STORAGE_VOL_GET_INFO)
async def vol_info(
    conn: Connection, args: r.remote_storage_vol_get_info_args
) -> r.remote_storage_vol_get_info_ret:
    vol = await volume(conn, args.vol)
    return r.remote_storage_vol_get_info_ret(c.VIR_STORAGE_VOL_FILE, vol["capacity"],
                                             vol["allocation"])  # fmt: skip


@handles(r.REMOTE_PROC_STORAGE_VOL_GET_INFO_FLAGS)
async def vol_info_flags(
    conn: Connection, args: r.remote_storage_vol_get_info_flags_args
) -> r.remote_storage_vol_get_info_flags_ret:
    vol = await volume(conn, args.vol)
    return r.remote_storage_vol_get_info_flags_ret(c.VIR_STORAGE_VOL_FILE, vol["capacity"],
                                                   vol["allocation"])  # fmt: skip


@handles(r.REMOTE_PROC_STORAGE_VOL_GET_XML_DESC)
async def vol_dumpxml(
    conn: Connection, args: r.remote_storage_vol_get_xml_desc_args
) -> r.remote_storage_vol_get_xml_desc_ret:
    vol = await volume(conn, args.vol)
    return r.remote_storage_vol_get_xml_desc_ret(storagexml.volume_xml(vol))


@handles(r.REMOTE_PROC_STORAGE_VOL_GET_PATH)
async def vol_path(
    conn: Connection, args: r.remote_storage_vol_get_path_args
) -> r.remote_storage_vol_get_path_ret:
    return r.remote_storage_vol_get_path_ret((await volume(conn, args.vol))["path"])


def _unsupported(message: str) -> RpcError:
    return RpcError(c.VIR_ERR_CONFIG_UNSUPPORTED, f"unsupported configuration: {message}",
                    c.VIR_FROM_STORAGE)  # fmt: skip


def _parse_volume(xml: str) -> storagexml.VolumeDefinition:
    try:
        return storagexml.parse_volume(xml)
    except (XmlInvalid, XmlUnsupported) as exc:
        raise _xml_error(exc) from None


def _new_volume(xml: str, info: PoolInfo) -> storagexml.VolumeDefinition:
    """A volume to make in ``info``'s pool: where it goes and how it is allocated are
    Qumran's (the pool's directory; sparse), so XML saying otherwise is refused."""
    doc = _parse_volume(xml)
    if doc.allocation not in (None, 0):
        raise _unsupported("volume/allocation: Qumran's volumes are sparse (allocated as "
                           "written); remove it or give 0")  # fmt: skip
    if doc.path is not None and Path(doc.path) != Path(info["path"]) / doc.name:
        raise _unsupported(f"volume/target/path: a volume of pool '{info['name']}' is the "
                           f"file {Path(info['path']) / doc.name}; remove it or give that")
    return doc


@handles(r.REMOTE_PROC_STORAGE_VOL_CREATE_XML)
async def vol_create(
    conn: Connection, args: r.remote_storage_vol_create_xml_args
) -> r.remote_storage_vol_create_xml_ret:
    info = await pool(conn, args.pool)
    doc = _new_volume(args.xml, info)
    vol = await conn.manager.storage.create_volume(
        conn.caller, doc.name, doc.capacity, pool=info["name"], format=doc.format,
        backing=doc.backing, owner=info["owner"],
    )  # fmt: skip
    return r.remote_storage_vol_create_xml_ret(vol_wire(conn, info, vol))


@handles(r.REMOTE_PROC_STORAGE_VOL_CREATE_XML_FROM)
async def vol_clone(
    conn: Connection, args: r.remote_storage_vol_create_xml_from_args
) -> r.remote_storage_vol_create_xml_from_ret:
    """virsh vol-clone: a copy in the same pool (Qumran copies within a pool only). The
    XML is the source's with a new name (virsh's way): its key, path and allocation are
    the source's; a format, capacity or backing store of its own is refused."""
    info = await pool(conn, args.pool)
    source = await volume(conn, args.clonevol)
    if (source["pool"], source["owner"]) != (info["name"], info["owner"]):
        raise _unsupported("Qumran clones a volume within its own pool; clone into "
                           f"'{args.clonevol.pool}'")
    doc = _parse_volume(args.xml)
    same = (doc.format, doc.capacity, doc.backing) == (
        source["format"], source["capacity"], source["backing"])  # fmt: skip
    if not same:
        raise _unsupported("a clone is an exact copy (the source's format, capacity and "
                           "backing store); resize it afterwards")  # fmt: skip
    vol = await conn.manager.storage.clone_volume(
        conn.caller, source["name"], doc.name, pool=info["name"], owner=info["owner"]
    )
    return r.remote_storage_vol_create_xml_from_ret(vol_wire(conn, info, vol))


@handles(r.REMOTE_PROC_STORAGE_VOL_DELETE)
async def vol_delete(conn: Connection, args: r.remote_storage_vol_delete_args) -> None:
    vol = await volume(conn, args.vol)
    await conn.manager.storage.delete_volume(conn.caller, vol["name"], pool=vol["pool"],
                                             owner=vol["owner"])  # fmt: skip


VIR_STORAGE_VOL_RESIZE_DELTA = 1 << 1  # libvirt-storage.h: virStorageVolResizeFlags
VIR_STORAGE_VOL_RESIZE_SHRINK = 1 << 2


@handles(r.REMOTE_PROC_STORAGE_VOL_RESIZE)
async def vol_resize(conn: Connection, args: r.remote_storage_vol_resize_args) -> None:
    vol = await volume(conn, args.vol)
    if args.flags & VIR_STORAGE_VOL_RESIZE_SHRINK:
        raise RpcError(c.VIR_ERR_INVALID_ARG,
                       "invalid argument: Qumran's volumes only grow (shrinking would cut off "
                       "the end of the disk)", c.VIR_FROM_STORAGE)  # fmt: skip
    size = args.capacity + (vol["capacity"] if args.flags & VIR_STORAGE_VOL_RESIZE_DELTA else 0)
    await conn.manager.storage.resize_volume(conn.caller, vol["name"], size, pool=vol["pool"],
                                             owner=vol["owner"])  # fmt: skip
