"""The connection and the host: the handshake, versions, node info, capabilities.

What a client asks before and just after CONNECT_OPEN (remote_driver.c's doRemoteOpen,
then virsh's and virt-manager's first calls), answered for the caller's connection.
"""

from __future__ import annotations

import os
import socket

from qumran.config.spec import MAX_VCPUS
from qumran.libvirt import constants as c
from qumran.libvirt import host
from qumran.libvirt.errors import RpcError
from qumran.libvirt.protocol import remote as r
from qumran.libvirt.server import Connection, ConnState, handles

FEATURES = frozenset({
    c.VIR_DRV_FEATURE_FD_PASSING,  # procedures/graphics.py hands a viewer its display
    c.VIR_DRV_FEATURE_TYPED_PARAM_STRING,
    c.VIR_DRV_FEATURE_PROGRAM_KEEPALIVE,
    c.VIR_DRV_FEATURE_REMOTE_EVENT_CALLBACK,
    c.VIR_DRV_FEATURE_REMOTE_CLOSE_CALLBACK,
})  # fmt: skip



@handles(r.REMOTE_PROC_AUTH_LIST)
async def auth_list(conn: Connection, _: None) -> r.remote_auth_list_ret:
    # The socket is UNIX and the kernel names the caller: nothing to authenticate.
    return r.remote_auth_list_ret([r.REMOTE_AUTH_NONE])


@handles(r.REMOTE_PROC_CONNECT_SUPPORTS_FEATURE)
async def supports_feature(
    conn: Connection, args: r.remote_connect_supports_feature_args
) -> r.remote_connect_supports_feature_ret:
    return r.remote_connect_supports_feature_ret(int(args.feature in FEATURES))


@handles(r.REMOTE_PROC_CONNECT_OPEN)
async def connect_open(conn: Connection, args: r.remote_connect_open_args) -> None:
    conn.state = ConnState.OPEN


@handles(r.REMOTE_PROC_CONNECT_CLOSE)
async def connect_close(conn: Connection, _: None) -> None:
    conn.state = ConnState.NEW  # the client closes the socket next


@handles(r.REMOTE_PROC_CONNECT_REGISTER_CLOSE_CALLBACK)
@handles(r.REMOTE_PROC_CONNECT_UNREGISTER_CLOSE_CALLBACK)
async def close_callback(conn: Connection, _: None) -> None:
    return None  # the client learns of a close from the socket itself


@handles(r.REMOTE_PROC_CONNECT_GET_URI)
async def get_uri(conn: Connection, _: None) -> r.remote_connect_get_uri_ret:
    return r.remote_connect_get_uri_ret("qemu:///system")


@handles(r.REMOTE_PROC_CONNECT_GET_TYPE)
async def get_type(conn: Connection, _: None) -> r.remote_connect_get_type_ret:
    return r.remote_connect_get_type_ret("QEMU")


@handles(r.REMOTE_PROC_CONNECT_GET_HOSTNAME)
async def get_hostname(conn: Connection, _: None) -> r.remote_connect_get_hostname_ret:
    return r.remote_connect_get_hostname_ret(socket.gethostname())


@handles(r.REMOTE_PROC_CONNECT_GET_VERSION)
async def get_version(conn: Connection, _: None) -> r.remote_connect_get_version_ret:
    return r.remote_connect_get_version_ret(host.hypervisor_version(conn.manager))


@handles(r.REMOTE_PROC_CONNECT_GET_LIB_VERSION)
async def get_lib_version(conn: Connection, _: None) -> r.remote_connect_get_lib_version_ret:
    return r.remote_connect_get_lib_version_ret(host.LIB_VERSION)


@handles(r.REMOTE_PROC_CONNECT_IS_SECURE)
async def is_secure(conn: Connection, _: None) -> r.remote_connect_is_secure_ret:
    return r.remote_connect_is_secure_ret(1)  # a local UNIX socket


@handles(r.REMOTE_PROC_NODE_GET_INFO)
async def node_info(conn: Connection, _: None) -> r.remote_node_get_info_ret:
    return host.node_info()


@handles(r.REMOTE_PROC_CONNECT_GET_CAPABILITIES)
async def capabilities(conn: Connection, _: None) -> r.remote_connect_get_capabilities_ret:
    return r.remote_connect_get_capabilities_ret(host.capabilities_xml(conn.manager))


@handles(r.REMOTE_PROC_NODE_GET_SECURITY_MODEL)
async def security_model(conn: Connection, _: None) -> r.remote_node_get_security_model_ret:
    return r.remote_node_get_security_model_ret([], [])  # none (libvirt: empty strings)


@handles(r.REMOTE_PROC_CONNECT_GET_DOMAIN_CAPABILITIES)
async def domain_capabilities(
    conn: Connection, args: r.remote_connect_get_domain_capabilities_args
) -> r.remote_connect_get_domain_capabilities_ret:
    try:
        xml = host.domain_capabilities_xml(conn.manager, args.emulatorbin, args.arch,
                                           args.machine, args.virttype)  # fmt: skip
    except ValueError as exc:
        raise RpcError(c.VIR_ERR_INVALID_ARG, f"invalid argument: {exc}", c.VIR_FROM_QEMU) from None
    return r.remote_connect_get_domain_capabilities_ret(xml)


@handles(r.REMOTE_PROC_CONNECT_GET_MAX_VCPUS)
async def max_vcpus(
    conn: Connection, args: r.remote_connect_get_max_vcpus_args
) -> r.remote_connect_get_max_vcpus_ret:
    return r.remote_connect_get_max_vcpus_ret(MAX_VCPUS)  # what a Qumran VM may have


# --- the node's counters (virsh nodememstats, nodecpustats, freecell, nodecpumap) ------
# Asked with nparams 0, a counter call answers how many there are (remote_driver.c).


@handles(r.REMOTE_PROC_NODE_GET_FREE_MEMORY)
async def free_memory(conn: Connection, _: None) -> r.remote_node_get_free_memory_ret:
    return r.remote_node_get_free_memory_ret(host.meminfo_kib().get("MemFree", 0) * 1024)


@handles(r.REMOTE_PROC_NODE_GET_MEMORY_STATS)
async def memory_stats(
    conn: Connection, args: r.remote_node_get_memory_stats_args
) -> r.remote_node_get_memory_stats_ret:
    if args.cellNum != c.VIR_NODE_MEMORY_STATS_ALL_CELLS and args.cellNum != 0:
        why = f"invalid argument: cell {args.cellNum}: Qumran reports one cell, 0"
        raise RpcError(c.VIR_ERR_INVALID_ARG, why)
    info = host.meminfo_kib()
    names = {"total": "MemTotal", "free": "MemFree", "buffers": "Buffers", "cached": "Cached"}
    params = [r.remote_node_get_memory_stats(k, info.get(v, 0)) for k, v in names.items()]
    if args.nparams == 0:
        return r.remote_node_get_memory_stats_ret([], len(params))
    params = params[: max(0, args.nparams)]
    return r.remote_node_get_memory_stats_ret(params, len(params))


@handles(r.REMOTE_PROC_NODE_GET_CPU_STATS)
async def cpu_stats(
    conn: Connection, args: r.remote_node_get_cpu_stats_args
) -> r.remote_node_get_cpu_stats_ret:
    try:
        times = host.cpu_times_ns(args.cpuNum)
    except ValueError as exc:
        raise RpcError(c.VIR_ERR_INVALID_ARG, f"invalid argument: {exc}") from None
    params = [r.remote_node_get_cpu_stats(k, v) for k, v in times.items()]
    if args.nparams == 0:
        return r.remote_node_get_cpu_stats_ret([], len(params))
    params = params[: max(0, args.nparams)]
    return r.remote_node_get_cpu_stats_ret(params, len(params))


@handles(r.REMOTE_PROC_NODE_GET_CPU_MAP)
async def cpu_map(
    conn: Connection, args: r.remote_node_get_cpu_map_args
) -> r.remote_node_get_cpu_map_ret:
    count = os.cpu_count() or 1
    online = host.online_cpus()
    bits = bytearray((count + 7) // 8)
    for cpu in online:
        if cpu < count:
            bits[cpu // 8] |= 1 << (cpu % 8)
    return r.remote_node_get_cpu_map_ret(bytes(bits) if args.need_map else b"",
                                         len(online) if args.need_online else 0, count)  # fmt: skip
