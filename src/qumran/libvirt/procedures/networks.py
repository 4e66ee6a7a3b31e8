"""Networks: Qumran's virtual networks as libvirt networks (docs/networks.md).

Every call goes through ``manager.networks`` as the connection's caller, the same
methods and rules as the HTTP API: root defines, starts, stops and changes networks; a
user sees the shared ones (and may attach VMs to them), and no others. The XML both ways
is :mod:`qumran.libvirt.netxml`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import uuid as uuidlib
from collections.abc import Iterator

from qumran.client.schema import NetworkInfo
from qumran.config.xmlread import XmlInvalid, XmlUnsupported
from qumran.errors import NotFound
from qumran.libvirt import constants as c
from qumran.libvirt import netxml
from qumran.libvirt.errors import RpcError
from qumran.libvirt.protocol import remote as r
from qumran.libvirt.server import Connection, handles


def wire(info: NetworkInfo) -> r.remote_nonnull_network:
    uuid = uuidlib.UUID(netxml.network_uuid(info["name"]))
    return r.remote_nonnull_network(info["name"], uuid.bytes)


def _no_network(what: str) -> RpcError:
    return RpcError(c.VIR_ERR_NO_NETWORK,
                    f"Network not found: no network with matching {what}", c.VIR_FROM_NETWORK)


@contextlib.contextmanager
def _missing_is(error: RpcError) -> Iterator[None]:
    try:
        yield
    except NotFound:
        raise error from None


async def network(conn: Connection, ref: r.remote_nonnull_network | str) -> NetworkInfo:
    name = ref if isinstance(ref, str) else ref.name
    with _missing_is(_no_network(f"name '{name}'")):
        return await conn.manager.networks.info(conn.caller, name)


async def _all(conn: Connection) -> list[NetworkInfo]:
    return await conn.manager.networks.list(conn.caller)


# --- listing ---------------------------------------------------------------------------------


def _listed(info: NetworkInfo, flags: int) -> bool:
    groups = (
        (c.VIR_CONNECT_LIST_NETWORKS_ACTIVE, info["active"],
         c.VIR_CONNECT_LIST_NETWORKS_INACTIVE, not info["active"]),
        (c.VIR_CONNECT_LIST_NETWORKS_PERSISTENT, True,
         c.VIR_CONNECT_LIST_NETWORKS_TRANSIENT, False),
        (c.VIR_CONNECT_LIST_NETWORKS_AUTOSTART, info["autostart"],
         c.VIR_CONNECT_LIST_NETWORKS_NO_AUTOSTART, not info["autostart"]),
    )  # fmt: skip
    for yes_flag, yes, no_flag, no in groups:
        wanted = flags & (yes_flag | no_flag)
        if wanted and not ((flags & yes_flag and yes) or (flags & no_flag and no)):
            return False
    return True


@handles(r.REMOTE_PROC_CONNECT_LIST_ALL_NETWORKS)
async def list_all(
    conn: Connection, args: r.remote_connect_list_all_networks_args
) -> r.remote_connect_list_all_networks_ret:
    found = [wire(n) for n in await _all(conn) if _listed(n, args.flags)]
    found = found[: r.REMOTE_NETWORK_LIST_MAX]
    return r.remote_connect_list_all_networks_ret(found if args.need_results else [], len(found))


@handles(r.REMOTE_PROC_CONNECT_NUM_OF_NETWORKS)
async def num_active(conn: Connection, _: None) -> r.remote_connect_num_of_networks_ret:
    return r.remote_connect_num_of_networks_ret(sum(1 for n in await _all(conn) if n["active"]))


@handles(r.REMOTE_PROC_CONNECT_LIST_NETWORKS)
async def list_active(
    conn: Connection, args: r.remote_connect_list_networks_args
) -> r.remote_connect_list_networks_ret:
    names = [n["name"] for n in await _all(conn) if n["active"]]
    return r.remote_connect_list_networks_ret(names[: max(0, args.maxnames)])


@handles(r.REMOTE_PROC_CONNECT_NUM_OF_DEFINED_NETWORKS)
async def num_inactive(conn: Connection, _: None) -> r.remote_connect_num_of_defined_networks_ret:
    return r.remote_connect_num_of_defined_networks_ret(
        sum(1 for n in await _all(conn) if not n["active"]))


@handles(r.REMOTE_PROC_CONNECT_LIST_DEFINED_NETWORKS)
async def list_inactive(
    conn: Connection, args: r.remote_connect_list_defined_networks_args
) -> r.remote_connect_list_defined_networks_ret:
    names = [n["name"] for n in await _all(conn) if not n["active"]]
    return r.remote_connect_list_defined_networks_ret(names[: max(0, args.maxnames)])


# --- one network -----------------------------------------------------------------------------


@handles(r.REMOTE_PROC_NETWORK_LOOKUP_BY_NAME)
async def by_name(
    conn: Connection, args: r.remote_network_lookup_by_name_args
) -> r.remote_network_lookup_by_name_ret:
    return r.remote_network_lookup_by_name_ret(wire(await network(conn, args.name)))


@handles(r.REMOTE_PROC_NETWORK_LOOKUP_BY_UUID)
async def by_uuid(
    conn: Connection, args: r.remote_network_lookup_by_uuid_args
) -> r.remote_network_lookup_by_uuid_ret:
    uuid = str(uuidlib.UUID(bytes=args.uuid))
    for info in await _all(conn):
        if netxml.network_uuid(info["name"]) == uuid:
            return r.remote_network_lookup_by_uuid_ret(wire(info))
    raise _no_network(f"uuid '{uuid}'")


@handles(r.REMOTE_PROC_NETWORK_GET_XML_DESC)
async def dumpxml(
    conn: Connection, args: r.remote_network_get_xml_desc_args
) -> r.remote_network_get_xml_desc_ret:
    info = await network(conn, args.net)
    return r.remote_network_get_xml_desc_ret(netxml.to_xml(info["definition"], info["bridge"]))


@handles(r.REMOTE_PROC_NETWORK_IS_ACTIVE)
async def is_active(
    conn: Connection, args: r.remote_network_is_active_args
) -> r.remote_network_is_active_ret:
    return r.remote_network_is_active_ret(int((await network(conn, args.net))["active"]))


@handles(r.REMOTE_PROC_NETWORK_IS_PERSISTENT)
async def is_persistent(
    conn: Connection, args: r.remote_network_is_persistent_args
) -> r.remote_network_is_persistent_ret:
    await network(conn, args.net)
    return r.remote_network_is_persistent_ret(1)  # every Qumran network is defined


@handles(r.REMOTE_PROC_NETWORK_GET_AUTOSTART)
async def get_autostart(
    conn: Connection, args: r.remote_network_get_autostart_args
) -> r.remote_network_get_autostart_ret:
    return r.remote_network_get_autostart_ret(int((await network(conn, args.net))["autostart"]))


@handles(r.REMOTE_PROC_NETWORK_GET_BRIDGE_NAME)
async def bridge_name(
    conn: Connection, args: r.remote_network_get_bridge_name_args
) -> r.remote_network_get_bridge_name_ret:
    info = await network(conn, args.net)
    if info["bridge"] is None:
        raise RpcError(c.VIR_ERR_OPERATION_INVALID,
                       f"Requested operation is not valid: network '{info['name']}' is a user "
                       "network: no bridge", c.VIR_FROM_NETWORK)  # fmt: skip
    return r.remote_network_get_bridge_name_ret(info["bridge"])


@handles(r.REMOTE_PROC_NETWORK_SET_AUTOSTART)
async def set_autostart(conn: Connection, args: r.remote_network_set_autostart_args) -> None:
    with _missing_is(_no_network(f"name '{args.net.name}'")):
        await conn.manager.networks.set_autostart(conn.caller, args.net.name, bool(args.autostart))


@handles(r.REMOTE_PROC_NETWORK_CREATE)
async def start(conn: Connection, args: r.remote_network_create_args) -> None:
    with _missing_is(_no_network(f"name '{args.net.name}'")):
        await conn.manager.networks.start(conn.caller, args.net.name)


@handles(r.REMOTE_PROC_NETWORK_DESTROY)
async def stop(conn: Connection, args: r.remote_network_destroy_args) -> None:
    # Refused while VMs are attached, as `qumran net-destroy` without --force.
    with _missing_is(_no_network(f"name '{args.net.name}'")):
        await conn.manager.networks.destroy(conn.caller, args.net.name)


async def _define(conn: Connection, xml: str) -> r.remote_nonnull_network:
    try:
        doc = netxml.parse(xml)
    except XmlUnsupported as exc:
        raise RpcError(c.VIR_ERR_CONFIG_UNSUPPORTED, f"unsupported configuration: {exc.message}",
                       c.VIR_FROM_NETWORK) from None  # fmt: skip
    except XmlInvalid as exc:
        raise RpcError(c.VIR_ERR_XML_ERROR, f"XML error: {exc.message}", c.VIR_FROM_XML) from None
    return wire(await conn.manager.networks.define(conn.caller, doc))


@handles(r.REMOTE_PROC_NETWORK_DEFINE_XML)
async def define(
    conn: Connection, args: r.remote_network_define_xml_args
) -> r.remote_network_define_xml_ret:
    return r.remote_network_define_xml_ret(await _define(conn, args.xml))


@handles(r.REMOTE_PROC_NETWORK_DEFINE_XML_FLAGS)
async def define_flags(
    conn: Connection, args: r.remote_network_define_xml_flags_args
) -> r.remote_network_define_xml_flags_ret:
    return r.remote_network_define_xml_flags_ret(await _define(conn, args.xml))


@handles(r.REMOTE_PROC_NETWORK_UNDEFINE)
async def undefine(conn: Connection, args: r.remote_network_undefine_args) -> None:
    with _missing_is(_no_network(f"name '{args.net.name}'")):
        await conn.manager.networks.undefine(conn.caller, args.net.name)


@handles(r.REMOTE_PROC_NETWORK_GET_DHCP_LEASES)
async def dhcp_leases(
    conn: Connection, args: r.remote_network_get_dhcp_leases_args
) -> r.remote_network_get_dhcp_leases_ret:
    info = await network(conn, args.net)
    with _missing_is(_no_network(f"name '{args.net.name}'")):
        leases = await conn.manager.networks.leases(conn.caller, info["name"])
    prefix = ipaddress.IPv4Interface(info["address"]).network.prefixlen if info["address"] else 0
    found = [
        r.remote_network_dhcp_lease(
            iface=info["bridge"] or "", expirytime=lease["expires"], type=0, mac=lease["mac"],
            iaid=None, ipaddr=lease["ip"], prefix=prefix, hostname=lease["hostname"],
            clientid=lease["client_id"],
        )
        for lease in leases
        if args.mac is None or lease["mac"].lower() == args.mac.lower()
    ][: r.REMOTE_NETWORK_DHCP_LEASES_MAX]  # fmt: skip
    return r.remote_network_get_dhcp_leases_ret(found if args.need_results else [], len(found))
