"""Domain statistics: GET_ALL_DOMAIN_STATS (``virsh domstats``, virt-manager's poll) and
the single lookups (``dommemstat``, ``domifstat``, ``domblkstat``), from what Qumran
counts (daemon/stats.py): the process's CPU time and resident memory, each network NIC's
TAP counters, and the disks' bytes read and written from the hypervisor's monitor.

What Qumran has no counter for is left out, never made up: no balloon (the current
memory is the defined memory), no per-vCPU times, no per-disk bytes when a VM has several
disks (the monitor's counters are summed over them), no counters for a user-mode NIC
(QEMU's own network stack, no TAP).
"""

from __future__ import annotations

from typing import Any

from qumran.client.schema import NicCounters
from qumran.daemon import nics
from qumran.daemon.domain import Domain
from qumran.drivers.process import proc_cpu_seconds, proc_rss_bytes
from qumran.libvirt import constants as c
from qumran.libvirt.errors import RpcError, no_support
from qumran.libvirt.procedures.domains import find, matches, state_of, wire
from qumran.libvirt.protocol import remote as r
from qumran.libvirt.server import Connection, handles
from qumran.libvirt.xdr import UnionValue

SUPPORTED = (c.VIR_DOMAIN_STATS_STATE | c.VIR_DOMAIN_STATS_CPU_TOTAL | c.VIR_DOMAIN_STATS_BALLOON
             | c.VIR_DOMAIN_STATS_VCPU | c.VIR_DOMAIN_STATS_INTERFACE
             | c.VIR_DOMAIN_STATS_BLOCK)  # fmt: skip


class Params:
    """A list of libvirt typed parameters, built in order."""

    def __init__(self) -> None:
        self.items: list[r.remote_typed_param] = []

    def _add(self, name: str, kind: int, value: Any) -> None:
        self.items.append(r.remote_typed_param(name, UnionValue(kind, value)))

    def int_(self, name: str, value: int) -> None:
        self._add(name, c.VIR_TYPED_PARAM_INT, value)

    def uint_(self, name: str, value: int) -> None:
        self._add(name, c.VIR_TYPED_PARAM_UINT, value)

    def ullong_(self, name: str, value: int) -> None:
        self._add(name, c.VIR_TYPED_PARAM_ULLONG, max(0, value))

    def llong_(self, name: str, value: int) -> None:
        self._add(name, c.VIR_TYPED_PARAM_LLONG, value)

    def string_(self, name: str, value: str) -> None:
        self._add(name, c.VIR_TYPED_PARAM_STRING, value)


def _vd(index: int) -> str:
    return "vd" + "abcdefghijklmnopqrstuvwxyz"[index]  # as the domain XML names disks


def _pid(dom: Domain) -> int | None:
    return dom.run.process.pid if dom.run is not None else None


def _cpu_ns(pid: int) -> int:
    return int(proc_cpu_seconds(pid) * 1e9)


def _nic_counters(dom: Domain) -> list[tuple[str, NicCounters]]:
    """(TAP, counters) of each network NIC of a running VM, read from sysfs now."""
    found = []
    for index, _ in nics.network_nics(dom.spec):
        tap = nics.tap_name(dom.uuid, index)
        counted = nics.counters(tap)
        if counted is not None:
            found.append((tap, counted))
    return found


async def _disk_bytes(conn: Connection, dom: Domain) -> tuple[int, int] | None:
    """The disks' (read, written) bytes, summed: the sampler's latest, or one taken now if
    that is older than its interval (the same rule as the API's /stats)."""
    samples = await conn.manager.stats.fresh_samples(dom)
    if not samples:
        return None
    last = samples[-1]
    read, written = last["disk_read_bytes"], last["disk_write_bytes"]
    return None if read is None or written is None else (read, written)


async def domain_stats(conn: Connection, dom: Domain, groups: int) -> list[r.remote_typed_param]:
    """One domain's record of GET_ALL_DOMAIN_STATS, the groups asked for (libvirt's names,
    docs: virConnectGetAllDomainStats)."""
    p = Params()
    pid = _pid(dom)
    if groups & c.VIR_DOMAIN_STATS_STATE:
        state, reason = state_of(dom)
        p.int_("state.state", state)
        p.int_("state.reason", reason)
    if groups & c.VIR_DOMAIN_STATS_CPU_TOTAL and pid is not None:
        p.ullong_("cpu.time", _cpu_ns(pid))
    if groups & c.VIR_DOMAIN_STATS_BALLOON:
        kib = dom.spec.memory * 1024
        p.ullong_("balloon.current", kib if dom.active else 0)
        p.ullong_("balloon.maximum", kib)
        if pid is not None:
            p.ullong_("balloon.rss", proc_rss_bytes(pid) // 1024)
    if groups & c.VIR_DOMAIN_STATS_VCPU:
        p.uint_("vcpu.current", dom.spec.vcpus)
        p.uint_("vcpu.maximum", dom.spec.vcpus)
    if groups & c.VIR_DOMAIN_STATS_INTERFACE and pid is not None:
        counted = _nic_counters(dom)
        p.uint_("net.count", len(counted))
        for n, (tap, nic) in enumerate(counted):
            p.string_(f"net.{n}.name", tap)
            p.ullong_(f"net.{n}.rx.bytes", nic["rx_bytes"])
            p.ullong_(f"net.{n}.rx.pkts", nic["rx_packets"])
            p.ullong_(f"net.{n}.tx.bytes", nic["tx_bytes"])
            p.ullong_(f"net.{n}.tx.pkts", nic["tx_packets"])
    if groups & c.VIR_DOMAIN_STATS_BLOCK:
        disks = dom.spec.disks
        p.uint_("block.count", len(disks))
        io = await _disk_bytes(conn, dom) if pid is not None and len(disks) == 1 else None
        for n, disk in enumerate(disks):
            p.string_(f"block.{n}.name", _vd(n))
            if disk.path is not None:
                p.string_(f"block.{n}.path", str(disk.path))
            if io is not None:
                p.ullong_(f"block.{n}.rd.bytes", io[0])
                p.ullong_(f"block.{n}.wr.bytes", io[1])
    return p.items


@handles(r.REMOTE_PROC_CONNECT_GET_ALL_DOMAIN_STATS)
async def all_domain_stats(
    conn: Connection, args: r.remote_connect_get_all_domain_stats_args
) -> r.remote_connect_get_all_domain_stats_ret:
    groups = args.stats or SUPPORTED
    unknown = groups & ~SUPPORTED
    if unknown and args.flags & c.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ENFORCE_STATS:
        raise no_support(f"domain statistics groups {unknown:#x}")
    if args.doms:  # virDomainListGetStats: these domains (each looked up as the caller)
        doms = [find(conn, ref) for ref in args.doms]
    else:
        filters = args.flags & c.VIR_CONNECT_GET_ALL_DOMAINS_STATS_FILTERS
        doms = [d for d in conn.manager.visible(conn.caller) if matches(d, filters)]
    records = [r.remote_domain_stats_record(wire(d), await domain_stats(conn, d, groups))
               for d in doms[: r.REMOTE_DOMAIN_LIST_MAX]]  # fmt: skip
    return r.remote_connect_get_all_domain_stats_ret(records)


# --- one domain's counters ---------------------------------------------------------------


def _running(dom: Domain) -> int:
    pid = _pid(dom)
    if pid is None:
        raise RpcError(c.VIR_ERR_OPERATION_INVALID,
                       f"Requested operation is not valid: domain is not running: {dom.name!r}",
                       c.VIR_FROM_QEMU)  # fmt: skip
    return pid


@handles(r.REMOTE_PROC_DOMAIN_MEMORY_STATS)
async def memory_stats(
    conn: Connection, args: r.remote_domain_memory_stats_args
) -> r.remote_domain_memory_stats_ret:
    dom = find(conn, args.dom)
    pid = _running(dom)
    kib = dom.spec.memory * 1024  # no balloon: the guest has what it was defined with
    stats = [
        r.remote_domain_memory_stat(c.VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON, kib),
        r.remote_domain_memory_stat(c.VIR_DOMAIN_MEMORY_STAT_RSS, proc_rss_bytes(pid) // 1024),
    ]
    return r.remote_domain_memory_stats_ret(stats[: max(0, args.maxStats)])


@handles(r.REMOTE_PROC_DOMAIN_INTERFACE_STATS)
async def interface_stats(
    conn: Connection, args: r.remote_domain_interface_stats_args
) -> r.remote_domain_interface_stats_ret:
    """By the NIC's TAP (``qt<uuid>n<index>``, as `qumran domiflist` shows) or its MAC."""
    dom = find(conn, args.dom)
    _running(dom)
    wanted = args.device.lower()
    for index, nic in enumerate(dom.spec.nics):
        tap = nics.tap_name(dom.uuid, index)
        if wanted not in (tap.lower(), (nic.mac or "").lower()):
            continue
        counted = nics.counters(tap) if nic.network is not None else None
        if counted is None:
            raise RpcError(c.VIR_ERR_OPERATION_INVALID,
                           f"Requested operation is not valid: NIC {args.device} is a user-mode "
                           "NIC (QEMU's own network stack): it has no counters",
                           c.VIR_FROM_QEMU)  # fmt: skip
        return r.remote_domain_interface_stats_ret(
            counted["rx_bytes"], counted["rx_packets"], -1, -1,
            counted["tx_bytes"], counted["tx_packets"], -1, -1,
        )  # fmt: skip
    raise RpcError(c.VIR_ERR_INVALID_ARG,
                   f"invalid argument: '{args.device}' is not a known interface of "
                   f"{dom.name} (give its TAP or MAC: virsh domiflist {dom.name})",
                   c.VIR_FROM_QEMU)  # fmt: skip


async def _block(conn: Connection, ref: r.remote_nonnull_domain, path: str) -> tuple[int, int]:
    """(read, written) bytes of the disk ``path`` names (vda, its file, or "" for all)."""
    dom = find(conn, ref)
    _running(dom)
    disks = dom.spec.disks
    names = {_vd(n) for n in range(len(disks))}
    names |= {str(d.path) for d in disks if d.path is not None}
    if path and path not in names:
        raise RpcError(c.VIR_ERR_INVALID_ARG,
                       f"invalid argument: invalid path: {path} is not a disk of {dom.name}",
                       c.VIR_FROM_QEMU)  # fmt: skip
    if not disks:
        return 0, 0  # nothing to count (libvirt's total over no disks)
    if path and len(disks) > 1:
        raise no_support(f"per-disk counters ({dom.name} has {len(disks)} disks; Qumran counts "
                         "them together: ask with no disk for the total)")  # fmt: skip
    io = await _disk_bytes(conn, dom)
    if io is None:
        raise RpcError(c.VIR_ERR_OPERATION_FAILED,
                       f"operation failed: the hypervisor of {dom.name} gave no disk counters",
                       c.VIR_FROM_QEMU)  # fmt: skip
    return io


@handles(r.REMOTE_PROC_DOMAIN_BLOCK_STATS)
async def block_stats(
    conn: Connection, args: r.remote_domain_block_stats_args
) -> r.remote_domain_block_stats_ret:
    read, written = await _block(conn, args.dom, args.path)
    return r.remote_domain_block_stats_ret(-1, read, -1, written, -1)


@handles(r.REMOTE_PROC_DOMAIN_BLOCK_STATS_FLAGS)
async def block_stats_flags(
    conn: Connection, args: r.remote_domain_block_stats_flags_args
) -> r.remote_domain_block_stats_flags_ret:
    read, written = await _block(conn, args.dom, args.path)
    p = Params()
    p.llong_("rd_bytes", read)
    p.llong_("wr_bytes", written)
    if args.nparams == 0:  # the client asks how many there are first
        return r.remote_domain_block_stats_flags_ret([], len(p.items))
    items = p.items[: args.nparams]
    return r.remote_domain_block_stats_flags_ret(items, len(items))
