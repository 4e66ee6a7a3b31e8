"""The networks facade: what the HTTP API and the web manager call (``manager.networks``).

Networks are root's: root (or the user a per-user qumrand runs as) defines, starts,
stops and changes them. Any user sees, and may attach VMs to, a network marked
``shared``; the others are invisible to them (the same "no such network" as one that does
not exist). A per-user qumrand cannot make bridges or firewall rules, so it offers
``user`` networks only, and so does a root qumrand started with ``--no-networks``.

Changes are serialised by one lock: they are rare, and starting or stopping one network
reloads the firewall table of all of them. The host work runs in a worker thread.

For the VMs' NICs (docs/networks.md): :meth:`Networks.usable` (may this uid attach to
this network), :meth:`Networks.open_tap` (a TAP owned by the VM's user on the network's
bridge, as an open fd), :meth:`Networks.lease_for` (the lease of a MAC), and hooks the
Manager sets: :attr:`Networks.attached` (VMs running on a network: destroy refuses while
there are any), :attr:`Networks.defined_on` (VMs whose definition has a NIC on a network:
undefine refuses while there are any) and :attr:`Networks.mac_owner` (whose VM a MAC is:
a user sees the leases of their own VMs).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qumran.client.schema import LeaseInfo, NetworkInfo
from qumran.config.network import NetworkSpec, validate_network
from qumran.daemon.network import addressing, dnsmasq, nft
from qumran.daemon.network import tap as taps
from qumran.daemon.network.plumbing import NetworkError, Plumbing, Runtime
from qumran.daemon.store import NetworkRecord, Store
from qumran.errors import AlreadyExists, InvalidArgument, InvalidState, NotFound, PermissionDenied

if TYPE_CHECKING:
    from qumran.daemon.manager import Caller
    from qumran.drivers.base import Owner

log = logging.getLogger(__name__)

DEFAULT = "default"
DEFAULT_MARK = "default-network-defined"


class Networks:
    def __init__(self, store: Store, run_dir: Path, state_dir: Path, admin_uid: int, *,
                 manage_host: bool = False) -> None:  # fmt: skip
        self.store = store
        self.plumbing = Plumbing(run_dir, state_dir)
        self.admin_uid = admin_uid
        # Only root can make bridges and rules; a root qumrand may be told not to.
        self.manage_host = manage_host and os.geteuid() == 0
        self.records: dict[str, NetworkRecord] = {}
        self.specs: dict[str, NetworkSpec] = {}
        self.runtime: dict[str, Runtime] = {}
        self._lock = asyncio.Lock()
        # Hooks for the VMs' NICs, set by the Manager: the VMs running on a network, and
        # the uid whose VM has a MAC (None: nobody's). Until then: none and nobody's.
        self.attached: Callable[[str], list[str]] = lambda network: []
        self.defined_on: Callable[[str], list[str]] = lambda network: []
        self.mac_owner: Callable[[str], int | None] = lambda mac: None

    # who may do what --------------------------------------------------------------------
    def _admin(self, caller: Caller) -> bool:
        return caller.uid in (0, self.admin_uid)

    def _require_admin(self, caller: Caller, verb: str) -> None:
        if not self._admin(caller):
            raise PermissionDenied(f"only root may {verb} networks; ask the administrator")

    def _offered(self, spec: NetworkSpec) -> None:
        if spec.type == "user" or self.manage_host:
            return
        if os.geteuid() != 0:
            why = (f"this qumrand runs as uid {os.geteuid()}, not root: it offers `user` "
                   "networks only (a VM's own user-mode stack)")  # fmt: skip
        else:
            why = "this qumrand manages no host networks (--no-networks): it offers `user` only"
        raise InvalidArgument(f"type: a {spec.type} network needs root's qumrand; {why}")

    def _get(self, caller: Caller, name: str) -> NetworkRecord:
        record = self.records.get(name)
        if record is None or not (self._admin(caller) or self.specs[name].shared):
            raise NotFound(f"no network named {name!r} (see `qumran net-list`)")
        return record

    def usable(self, uid: int, name: str) -> NetworkSpec:
        """The network a VM of ``uid`` may attach a NIC to: root's own, or a shared one."""
        record = self.records.get(name)
        if record is None:
            raise NotFound(f"no network named {name!r} (see `qumran net-list`)")
        spec = self.specs[name]
        if not (uid in (0, self.admin_uid) or spec.shared):
            raise NotFound(f"no network named {name!r} (see `qumran net-list`)")
        return spec

    # listing ----------------------------------------------------------------------------
    async def list(self, caller: Caller) -> list[NetworkInfo]:
        return [self._info(caller, r) for r in self.records.values()
                if self._admin(caller) or self.specs[r.name].shared]  # fmt: skip

    async def info(self, caller: Caller, name: str) -> NetworkInfo:
        return self._info(caller, self._get(caller, name))

    def _info(self, caller: Caller, record: NetworkRecord) -> NetworkInfo:
        spec = self.specs[record.name]
        rt = self.runtime.get(record.name)
        dhcp = spec.ipv4.dhcp if spec.ipv4 is not None else None
        return {
            "name": record.name,
            "type": spec.type,
            "active": record.active,
            "autostart": record.autostart,
            "shared": spec.shared,
            "bridge": spec.bridge_name,
            "address": str(spec.ipv4.address) if spec.ipv4 is not None else None,
            "dhcp": f"{dhcp.start}-{dhcp.end}" if dhcp is not None else None,
            "domain": spec.domain,
            "dns_forward": spec.dns.forward if spec.managed else False,
            "dnsmasq_pid": rt.dnsmasq_pid if rt is not None and self._admin(caller) else None,
            "definition": record.definition,
        }

    async def leases(self, caller: Caller, name: str) -> builtins.list[LeaseInfo]:
        """The network's DHCP leases (a user: those of their own VMs)."""
        record = self._get(caller, name)
        found = [_lease(record.name, x) for x in
                 dnsmasq.leases(self.plumbing.files(record.name).leases)]  # fmt: skip
        if self._admin(caller):
            return found
        return [x for x in found if self.mac_owner(x["mac"]) == caller.uid]

    def lease_for(self, mac: str, network: str | None = None) -> LeaseInfo | None:
        """The current lease of ``mac`` (on ``network``, or on any), the latest if several."""
        mac = mac.lower()
        names = [network] if network is not None else list(self.records)
        best: LeaseInfo | None = None
        for name in names:
            if name not in self.records:
                continue
            for lease in dnsmasq.leases(self.plumbing.files(name).leases):
                if lease.mac == mac and (best is None or lease.expires > best["expires"]):
                    best = _lease(name, lease)
        return best

    # definitions ------------------------------------------------------------------------
    async def define(self, caller: Caller, doc: Any) -> NetworkInfo:
        self._require_admin(caller, "define")
        spec = validate_network(doc)
        self._offered(spec)
        async with self._lock:
            if spec.name in self.records:
                raise AlreadyExists(
                    f"a network named {spec.name!r} already exists (`qumran net-info "
                    f"{spec.name}`); undefine it first or choose another name"
                )
            addressing.check_networks(spec, self.specs.values())
            if spec.managed:
                await asyncio.to_thread(self._check_host, spec)
            record = self._add(spec)
        log.info("network %s defined (%s)", spec.name, spec.type)
        return self._info(caller, record)

    def _check_host(self, spec: NetworkSpec) -> None:
        own = self.plumbing.own_bridge(spec)  # refuses a bridge name someone else has
        addressing.check_host(spec, own_bridge=own.index if own is not None else None)

    def _add(self, spec: NetworkSpec) -> NetworkRecord:
        record = NetworkRecord(spec.name, spec.model_dump(mode="json", exclude_none=True),
                               spec.autostart, False, time.time())  # fmt: skip
        self.store.add_network(record)
        self.records[spec.name], self.specs[spec.name] = record, spec
        return record

    async def undefine(self, caller: Caller, name: str, *, force: bool = False) -> None:
        """Remove the definition. Refused while it is active, and while defined VMs have
        a NIC on it unless ``force`` (those VMs then fail to start until their NIC names
        another network, or the network is defined again)."""
        self._require_admin(caller, "undefine")
        async with self._lock:
            record = self._get(caller, name)
            if record.active:
                raise InvalidState(
                    f"network {name!r} is active; stop it first (`qumran net-destroy {name}`)"
                )
            users = self.defined_on(name)
            if users and not force:
                raise InvalidState(
                    f"network {name!r} is used by defined VMs ({', '.join(sorted(users))}); "
                    f"change their nics first, or use `qumran net-undefine --force {name}`"
                )
            self.store.remove_network(name)
            del self.records[name], self.specs[name]
            files = self.plumbing.files(name)
            await asyncio.to_thread(dnsmasq.remove_files, files, keep_leases=False)
        log.info("network %s undefined%s", name,
                 f" (VMs still naming it: {users})" if users else "")  # fmt: skip

    async def set_autostart(self, caller: Caller, name: str, enabled: bool) -> NetworkInfo:
        self._require_admin(caller, "change")
        async with self._lock:
            record = self._get(caller, name)
            self.store.set_network_flags(name, autostart=enabled)
            self.records[name] = record = _replace(record, autostart=enabled)
        return self._info(caller, record)

    # start and stop ---------------------------------------------------------------------
    def _rules(self, with_: str | None = None, without: str | None = None
               ) -> builtins.list[nft.Rules]:  # fmt: skip
        names = {n for n, r in self.records.items() if r.active} | ({with_} if with_ else set())
        if without is not None:
            names.discard(without)
        out = []
        for name in sorted(names):
            spec = self.specs[name]
            if spec.managed and spec.ipv4 is not None and spec.bridge_name is not None:
                out.append(nft.Rules(name, spec.bridge_name, spec.ipv4.address.network,
                                     nat=spec.type == "nat"))  # fmt: skip
        return out

    async def start(self, caller: Caller, name: str) -> NetworkInfo:
        self._require_admin(caller, "start")
        async with self._lock:
            record = self._get(caller, name)
            await self._start(record)
        return self._info(caller, self.records[name])

    async def _start(self, record: NetworkRecord) -> None:
        name = record.name
        if record.active:
            raise InvalidState(f"network {name!r} is active already")
        spec = self.specs[name]
        self._offered(spec)
        rules, before = self._rules(with_=name), self._rules()
        rt = await asyncio.to_thread(self.plumbing.start, spec, rules, before)
        self.store.set_network_flags(name, active=True)
        self.records[name] = _replace(record, active=True)
        self.runtime[name] = rt
        log.info("network %s started (bridge %s, dnsmasq pid %s)", name, spec.bridge_name,
                 rt.dnsmasq_pid)  # fmt: skip

    async def destroy(self, caller: Caller, name: str, *, force: bool = False) -> NetworkInfo:
        """Stop the network. Refused while VMs are attached to it, unless ``force`` (their
        NICs then lose the bridge: they stay up, with no link to anything)."""
        self._require_admin(caller, "stop")
        async with self._lock:
            record = self._get(caller, name)
            if not record.active:
                raise InvalidState(f"network {name!r} is not active")
            attached = self.attached(name)
            if attached and not force:
                raise InvalidState(
                    f"network {name!r} has VMs attached ({', '.join(sorted(attached))}); stop "
                    f"them first, or use `qumran net-destroy --force {name}`"
                )
            spec = self.specs[name]
            await asyncio.to_thread(self.plumbing.stop, spec, self._rules(without=name))
            self.store.set_network_flags(name, active=False)
            self.records[name] = _replace(record, active=False)
            self.runtime.pop(name, None)
        log.info("network %s stopped%s", name, f" (VMs attached: {attached})" if attached else "")
        return self._info(caller, self.records[name])

    # for the VMs' NICs ------------------------------------------------------------------
    async def open_tap(self, network: str, tap_name: str, owner: Owner) -> int:
        """A TAP named ``tap_name``, owned by ``owner``, a port of ``network``'s bridge,
        as an open fd (the caller passes it to the hypervisor and closes its copy)."""
        spec = self.usable(owner.uid, network)
        rt = self.runtime.get(network)
        if not self.records[network].active or rt is None or rt.bridge_index is None:
            raise InvalidState(
                f"network {network!r} is not active (`qumran net-start {network}`)"
                if spec.type != "user"
                else f"network {network!r} is a user network: no TAP"
            )
        index = rt.bridge_index
        try:
            return await asyncio.to_thread(taps.open_tap, tap_name, owner.uid, owner.gid, index)
        except OSError as exc:
            raise NetworkError(f"cannot make TAP {tap_name} on network {network!r}: {exc}"
                               ) from None  # fmt: skip

    # daemon start -----------------------------------------------------------------------
    async def restore(self, *, make_default: bool = False) -> None:
        """Load definitions; re-adopt running networks; define ``default`` the first time
        (``make_default``); start autostart networks. Runs before VMs re-attach."""
        for record in self.store.networks():
            try:
                spec = validate_network(record.definition)
            except InvalidArgument as exc:
                log.error("definition of network %s no longer validates: %s", record.name, exc)
                continue
            self.records[record.name], self.specs[record.name] = record, spec
        if make_default and self.manage_host and not self.store.marked(DEFAULT_MARK):
            await self._define_default()
        for record in list(self.records.values()):
            if record.active:
                await self._adopt(record)
        if self.manage_host and (self._rules() or self.plumbing.run.joinpath("nft.json").exists()):
            rules = self._rules()
            if not await asyncio.to_thread(self.plumbing.rules_intact, rules):
                await asyncio.to_thread(self.plumbing.load_rules, rules)
                log.warning("firewall table inet qumran was missing or changed: loaded again")
        for record in list(self.records.values()):
            if record.autostart and not record.active:
                try:
                    await self._start(record)
                except (InvalidArgument, InvalidState, NetworkError) as exc:
                    log.error("autostart of network %s failed: %s", record.name, exc.message)

    async def _adopt(self, record: NetworkRecord) -> None:
        spec = self.specs[record.name]
        if spec.type != "user" and not self.manage_host:
            log.error("network %s was running, but this qumrand manages no host networks: "
                      "left as it is", record.name)  # fmt: skip
            return
        try:
            rt, repaired = await asyncio.to_thread(self.plumbing.adopt, spec)
        except (InvalidState, NetworkError) as exc:
            log.error("network %s cannot be taken over: %s; marked stopped", record.name,
                      exc.message)  # fmt: skip
            self.store.set_network_flags(record.name, active=False)
            self.records[record.name] = _replace(record, active=False)
            return
        self.runtime[record.name] = rt
        for what in repaired:
            log.warning("network %s: %s", record.name, what)
        log.info("network %s re-adopted (bridge %s, dnsmasq pid %s)%s", record.name,
                 spec.bridge_name, rt.dnsmasq_pid,
                 "" if repaired else ", nothing rebuilt")  # fmt: skip

    async def _define_default(self) -> None:
        self.store.mark(DEFAULT_MARK)
        if DEFAULT in self.records:
            return
        taken = [addressing.subnet_of(s) for s in self.specs.values()]
        subnet = await asyncio.to_thread(
            addressing.free_default_subnet, [t for t in taken if t is not None]
        )
        if subnet is None:
            log.error("no free 192.168.1xx.0/24 for the default network: none defined")
            return
        hosts = subnet.network_address
        spec = validate_network({
            "name": DEFAULT, "type": "nat", "shared": True, "autostart": True,
            "ipv4": {"address": f"{hosts + 1}/{subnet.prefixlen}",
                     "dhcp": {"start": str(hosts + 2), "end": str(hosts + 254)}},
        })  # fmt: skip
        self._add(spec)
        log.info("defined the default NAT network on %s (the first free 192.168.1xx.0/24)", subnet)


def _replace(record: NetworkRecord, **changes: Any) -> NetworkRecord:
    import dataclasses

    return dataclasses.replace(record, **changes)


def _lease(network: str, lease: dnsmasq.Lease) -> LeaseInfo:
    return {"network": network, "mac": lease.mac, "ip": str(lease.ip), "hostname": lease.hostname,
            "expires": lease.expires, "client_id": lease.client_id}  # fmt: skip
