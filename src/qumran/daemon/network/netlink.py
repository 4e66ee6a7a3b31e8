"""Interfaces, addresses and routes through netlink (pyroute2's IPRoute), and nothing else.

Every call opens its own netlink socket (cheap, and nothing is shared between threads)
and runs blocking: the service calls these from a worker thread. A netlink refusal is
turned into :class:`NetlinkFailure` here, with the kernel's errno, so the layers above
never see pyroute2's exceptions.

A bridge qumrand makes carries an interface alias (``ip link`` shows it) naming its
network: that is how qumrand tells its own bridge from someone else's of the same name,
and how a restarted qumrand knows what it finds is what an earlier one made.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

ALIAS_PREFIX = "qumran network "
AF_INET = 2
RT_TABLE_MAIN = 254


class NetlinkFailure(OSError):
    """The kernel refused a netlink request (``errno`` says why)."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None  # "bridge", "tun", "veth", ... (None: a plain device)
    alias: str | None
    master: int | None  # the bridge it is a port of
    up: bool
    mac: str | None


def our_alias(network: str) -> str:
    return ALIAS_PREFIX + network


@contextmanager
def _ipr() -> Iterator[Any]:
    # Imported here: pyroute2 takes ~0.1 s to import, and most qumrand starts need none.
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise NetlinkFailure(exc.code, f"netlink: {errno.errorcode.get(exc.code, exc.code)}: "
                                       f"{exc}") from None  # fmt: skip


def _link(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=kind,
        alias=msg.get_attr("IFLA_IFALIAS"),
        master=msg.get_attr("IFLA_MASTER"),
        up=bool(msg["flags"] & 1),  # IFF_UP
        mac=msg.get_attr("IFLA_ADDRESS"),
    )


def links() -> list[Link]:
    with _ipr() as ipr:
        return [_link(m) for m in ipr.get_links()]


def find_link(name: str) -> Link | None:
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        return _link(ipr.get_links(found[0])[0])


def stable_mac(name: str) -> str:
    """A bridge's own MAC, from its network's name: without one set, a bridge takes the
    lowest MAC of its ports and changes it as guests come and go (guests' ARP caches
    would hold a stale router)."""
    digest = hashlib.sha256(b"qumran bridge " + name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def create_bridge(name: str, network: str) -> int:
    """A new bridge, STP off and no forward delay (ports forward at once, as libvirt's
    do), marked as ``network``'s, down and without addresses. Returns its index."""
    with _ipr() as ipr:
        ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
        index = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=index, ifalias=our_alias(network), address=stable_mac(network))
        return int(index)


def delete_link(index: int) -> None:
    """Remove an interface; one already gone is not an error."""
    try:
        with _ipr() as ipr:
            ipr.link("del", index=index)
    except NetlinkFailure as exc:
        if exc.errno != errno.ENODEV:
            raise


def set_up(index: int) -> None:
    with _ipr() as ipr:
        ipr.link("set", index=index, state="up")


def set_noqueue(index: int) -> None:
    """Give the device the ``noqueue`` root qdisc: a TAP's packets go straight to the VM's
    queue, with no qdisc of the host's in between (a TAP starts with pfifo_fast)."""
    with _ipr() as ipr:
        ipr.tc("replace", "noqueue", index, 0)


def set_master(index: int, bridge: int) -> None:
    with _ipr() as ipr:
        ipr.link("set", index=index, master=bridge, state="up")


def addresses(index: int | None = None) -> list[tuple[int, ipaddress.IPv4Interface]]:
    """(interface index, address/prefix) of every IPv4 address, or of one interface's."""
    with _ipr() as ipr:
        found = ipr.get_addr(family=AF_INET, index=index) if index else ipr.get_addr(family=AF_INET)
        return [
            (m["index"], ipaddress.IPv4Interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}"))
            for m in found
        ]


def add_address(index: int, address: ipaddress.IPv4Interface) -> None:
    with _ipr() as ipr:
        ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen,
                 broadcast=str(address.network.broadcast_address))  # fmt: skip


def routes() -> list[tuple[int | None, ipaddress.IPv4Network]]:
    """(output interface, destination) of the main table's IPv4 routes, the default
    route left out (every subnet "overlaps" it; it is no clash)."""
    out = []
    with _ipr() as ipr:
        for m in ipr.get_routes(family=AF_INET, table=RT_TABLE_MAIN):
            dst = m.get_attr("RTA_DST")
            if dst is None or m["dst_len"] == 0:
                continue
            net = ipaddress.IPv4Network(f"{dst}/{m['dst_len']}", strict=False)
            out.append((m.get_attr("RTA_OIF"), net))
    return out


def used_subnets(ignore: int | None = None) -> list[tuple[ipaddress.IPv4Network, str]]:
    """Subnets the host already uses, each with where it was seen (for an error line):
    every interface's addresses and every route, except those of interface ``ignore``
    (a network's own bridge, when it is checked again)."""
    names = {link.index: link.name for link in links()}
    used: list[tuple[ipaddress.IPv4Network, str]] = []
    for index, address in addresses():
        if index != ignore:
            used.append((address.network, f"address {address} on {names.get(index, index)}"))
    for oif, net in routes():
        if oif != ignore:
            where = f" via {names.get(oif, oif)}" if oif is not None else ""
            used.append((net, f"route to {net}{where}"))
    return used


def ip_forwarding(enable: bool | None = None) -> bool:
    """net.ipv4.ip_forward of this network namespace; with ``enable``, set it first.
    NAT needs it on (libvirt turns it on the same way); qumrand never turns it off, as
    other things on the host may rely on it by then."""
    path = "/proc/sys/net/ipv4/ip_forward"
    if enable:
        with open(path, "w") as f:
            f.write("1\n")
    with open(path) as f:
        return f.read().strip() == "1"
