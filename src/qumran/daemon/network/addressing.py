"""Which subnets are free: clashes with other networks and with the host, and the
subnet of the ``default`` network.

A network's subnet must not overlap another network's (defined, running or not: both
could run) nor any address or route the host has (its guests would shadow real hosts,
or be unreachable). The host is asked through netlink each time: its interfaces come and
go (a VPN, a docker bridge), so a check at define time is repeated at start.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network

from qumran.config.network import NetworkSpec
from qumran.daemon.network import netlink
from qumran.errors import InvalidArgument

# libvirt's default subnet first (guests and firewalls of users moving over expect it),
# then the rest of 192.168.1xx.0/24 in order.
DEFAULT_CANDIDATES = tuple(
    IPv4Network(f"192.168.{n}.0/24") for n in (*range(122, 200), *range(100, 122))
)


def subnet_of(spec: NetworkSpec) -> IPv4Network | None:
    return spec.ipv4.address.network if spec.ipv4 is not None else None


def check_networks(spec: NetworkSpec, others: Iterable[NetworkSpec]) -> None:
    """Refuse a subnet or bridge another defined network has."""
    mine = subnet_of(spec)
    for other in others:
        if other.name == spec.name:
            continue
        theirs = subnet_of(other)
        if mine is not None and theirs is not None and mine.overlaps(theirs):
            raise InvalidArgument(
                f"ipv4.address: {mine} overlaps network {other.name!r} ({theirs}); choose "
                "another subnet"
            )
        if spec.managed and other.managed and spec.bridge_name == other.bridge_name:
            raise InvalidArgument(
                f"bridge: {spec.bridge_name} is network {other.name!r}'s bridge already"
            )


def check_host(spec: NetworkSpec, own_bridge: int | None = None) -> None:
    """Refuse a subnet that overlaps an address or route of the host (but those on the
    network's own bridge, ``own_bridge``)."""
    mine = subnet_of(spec)
    if mine is None:
        return
    for used, where in netlink.used_subnets(ignore=own_bridge):
        if mine.overlaps(used):
            raise InvalidArgument(
                f"ipv4.address: {mine} overlaps the host's {where}; choose another subnet "
                "(`ip route` and `ip addr` show what the host uses)"
            )


def free_default_subnet(taken: Iterable[IPv4Network]) -> IPv4Network | None:
    """The first candidate /24 no host address or route and no network uses."""
    used = [net for net, _ in netlink.used_subnets()] + list(taken)
    return next((c for c in DEFAULT_CANDIDATES if not any(c.overlaps(u) for u in used)), None)
