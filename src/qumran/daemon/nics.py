"""The VMs' NICs on qumrand's networks (docs/networks.md): MACs, TAPs, addresses, counters.

- A network NIC (``nics[].network``) gets a MAC at define time when it has none: random in
  52:54:00 (QEMU's and libvirt's block), unique among the daemon's defined VMs, stored in
  the definition so that it stays the VM's (its DHCP lease follows it).
- At each start the daemon makes one TAP per network NIC, named from the VM's uuid and
  the NIC's index (:func:`tap_name`: the same name every start, so a restarted qumrand
  finds it with nothing recorded), owned by the VM's user and a port of the network's
  bridge, and hands it to the hypervisor as an open fd. The TAP is not persistent: it
  goes with the hypervisor process, however that ends.
- A TAP's counters are the host's side of the wire: what it receives the guest sent.
  :func:`counters` turns them round, as libvirt does, so rx is what the guest received.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from qumran.client.schema import InterfaceInfo, NicCounters
from qumran.config.spec import Nic, VmSpec
from qumran.drivers.base import NetFds, Owner
from qumran.drivers.qemu.cmdline import default_mac
from qumran.errors import InvalidArgument, NotFound, QumranError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qumran.daemon.domain import Domain
    from qumran.daemon.network import Networks

MAC_PREFIX = "52:54:00"
VHOST_NET = "/dev/vhost-net"
SYS_NET = Path("/sys/class/net")


def tap_name(uuid: str, index: int) -> str:
    """``qt<first 8 hex digits of the uuid>n<index>``: at most 12 characters (IFNAMSIZ 16)."""
    return f"qt{uuid.replace('-', '')[:8]}n{index}"


def network_nics(spec: VmSpec) -> list[tuple[int, Nic]]:
    return [(i, nic) for i, nic in enumerate(spec.nics) if nic.network is not None]


def macs_of(spec: VmSpec | None) -> set[str]:
    return {nic.mac for nic in spec.nics if nic.mac is not None} if spec is not None else set()


def random_mac(taken: set[str]) -> str:
    while True:
        mac = MAC_PREFIX + "".join(f":{b:02x}" for b in secrets.token_bytes(3))
        if mac not in taken:
            return mac


def with_macs(spec: VmSpec, taken: set[str], previous: VmSpec | None = None) -> VmSpec:
    """``spec`` with a MAC in each network NIC that has none: the one NIC ``i`` had in
    ``previous`` (a redefinition keeps its MACs), else a fresh one not in ``taken``."""
    nics = list(spec.nics)
    taken = set(taken) | macs_of(spec)
    changed = False
    for index, nic in network_nics(spec):
        if nic.mac is not None:
            continue
        old = previous.nics[index] if previous is not None and index < len(previous.nics) else None
        mac = old.mac if old is not None and old.mac is not None and old.mac not in taken else None
        mac = mac or random_mac(taken)
        taken.add(mac)
        nics[index] = nic.model_copy(update={"mac": mac})
        changed = True
    return spec.model_copy(update={"nics": tuple(nics)}) if changed else spec


def check_networks(spec: VmSpec, uid: int, networks: Networks) -> None:
    """Each network NIC names a network that exists, that ``uid`` may use, and that
    gives TAPs; one line naming ``nics[N].network`` otherwise."""
    for index, nic in network_nics(spec):
        assert nic.network is not None
        try:
            net = networks.usable(uid, nic.network)
        except NotFound as exc:
            raise InvalidArgument(f"nics[{index}].network: {exc.message}") from None
        if net.type == "user":
            raise InvalidArgument(
                f"nics[{index}].network: {nic.network!r} is a user network (no bridge, no "
                "TAP); for QEMU's user-mode stack write `type: user` instead"
            )


def check_duplicates(
    spec: VmSpec,
    others: Iterable[tuple[str, VmSpec]],
    visible: Callable[[str], bool],
) -> None:
    """No MAC twice on one network: within ``spec``, or against another defined VM's
    (``others``: name and definition). The other VM is named if the caller may see it."""
    mine: dict[tuple[str, str], int] = {}
    for index, nic in network_nics(spec):
        if nic.mac is None or nic.network is None:
            continue
        key = (nic.network, nic.mac)
        if key in mine:
            raise InvalidArgument(
                f"nics[{index}].mac: {nic.mac} is also nics[{mine[key]}]'s on network "
                f"{nic.network!r}; give each NIC its own MAC (or none: one is chosen)"
            )
        mine[key] = index
    for name, other in others:
        for _, nic in network_nics(other):
            if nic.network is None or nic.mac is None:
                continue
            clash = mine.get((nic.network, nic.mac))
            if clash is None:
                continue
            whose = f"VM {name!r}" if visible(name) else "another VM"
            raise InvalidArgument(
                f"nics[{clash}].mac: {nic.mac} is {whose}'s on network {nic.network!r}; "
                "give another MAC, or none (one is chosen)"
            )


def open_vhost() -> int | None:
    """/dev/vhost-net opened by the daemon, or None where it cannot be (no module, no
    device node): the NIC then runs without it, the same device for the guest."""
    try:
        return os.open(VHOST_NET, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None


async def open_nics(spec: VmSpec, uuid: str, owner: Owner, networks: Networks,
                    *, vhost: bool = True) -> tuple[NetFds, ...]:  # fmt: skip
    """A TAP (and a vhost-net fd, when there is one) per network NIC, in order; on any
    failure every TAP made so far is closed (so gone) and one error names the NIC."""
    made: list[NetFds] = []
    try:
        for index, nic in network_nics(spec):
            assert nic.network is not None
            try:
                tap = await networks.open_tap(nic.network, tap_name(uuid, index), owner)
            except QumranError as exc:
                raise type(exc)(f"nics[{index}].network: {exc.message}") from None
            made.append(NetFds(tap, None))
            if vhost:
                made[-1] = NetFds(tap, open_vhost())
    except BaseException:
        close_nics(made)
        raise
    return tuple(made)


def close_nics(nets: Iterable[NetFds]) -> None:
    """The daemon's copies: the hypervisor has its own, which keep the TAPs alive."""
    for net in nets:
        for fd in net.all:
            with contextlib.suppress(OSError):
                os.close(fd)


def _counter(tap: str, name: str) -> int | None:
    try:
        return int((SYS_NET / tap / "statistics" / name).read_text())
    except (OSError, ValueError):
        return None


def counters(tap: str) -> NicCounters | None:
    """The TAP's counters from the guest's side (the TAP's rx is the guest's tx), or None
    when there is no such TAP."""
    values = {k: _counter(tap, k) for k in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")}
    if any(v is None for v in values.values()):
        return None
    return {
        "rx_bytes": values["tx_bytes"] or 0,
        "tx_bytes": values["rx_bytes"] or 0,
        "rx_packets": values["tx_packets"] or 0,
        "tx_packets": values["rx_packets"] or 0,
    }


def interfaces(spec: VmSpec, uuid: str, running: bool, networks: Networks
               ) -> list[InterfaceInfo]:  # fmt: skip
    """Each NIC of the VM: its TAP, network, model, MAC and (on a network) leased address."""
    found: list[InterfaceInfo] = []
    for index, nic in enumerate(spec.nics):
        tap = tap_name(uuid, index) if nic.network is not None else None
        lease = networks.lease_for(nic.mac, nic.network) if nic.mac and nic.network else None
        found.append({
            "index": index,
            "interface": tap if running else None,
            "type": nic.type,
            "network": nic.network,
            "model": nic.model,
            "mac": nic.mac if nic.mac is not None else default_mac(spec.name, index),
            "ip": lease["ip"] if lease is not None else None,
            "hostname": lease["hostname"] if lease is not None else None,
            "counters": counters(tap) if running and tap is not None else None,
        })  # fmt: skip
    return found


# --- over the Manager's VMs (its hooks for the networks, and define's checks) ----------


def running_on(domains: Mapping[str, Domain], network: str) -> list[str]:
    """The VMs running with a NIC on ``network``."""
    return [d.name for d in domains.values()
            if d.active and any(n.network == network for n in d.spec.nics)]  # fmt: skip


def defined_on(domains: Mapping[str, Domain], network: str) -> list[str]:
    """The VMs with a NIC on ``network`` in their definition or the one saved for next
    start, running or not."""
    return [d.name for d in domains.values()
            if any(nic.network == network for s in (d.spec, d.pending) if s is not None
                   for nic in s.nics)]  # fmt: skip


def mac_owner(domains: Mapping[str, Domain], mac: str) -> int | None:
    """The uid whose VM has ``mac`` (in its definition or the one saved for next start)."""
    for dom in domains.values():
        if mac in macs_of(dom.spec) or mac in macs_of(dom.pending):
            return dom.owner
    return None


def prepare(
    spec: VmSpec,
    uid: int,
    networks: Networks,
    domains: Mapping[str, Domain],
    itself: Domain | None,
    visible: Callable[[Domain], bool],
) -> VmSpec:
    """``spec`` with its network NICs checked (the networks exist, ``uid`` may use them,
    no MAC twice on a network) and a MAC in each (a redefinition, ``itself``, keeps its
    own); ``visible``: whether the caller may be told another VM's name."""
    if not network_nics(spec):
        return spec
    check_networks(spec, uid, networks)
    others = [d for d in domains.values() if d is not itself]
    taken = set().union(*(macs_of(d.spec) | macs_of(d.pending) for d in others))
    previous = None if itself is None else itself.pending or itself.spec
    spec = with_macs(spec, taken, previous)
    defined = [(d.name, s) for d in others for s in (d.spec, d.pending) if s is not None]
    check_duplicates(spec, defined, lambda name: visible(domains[name]))
    return spec
