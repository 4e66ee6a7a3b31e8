"""Making, checking and removing what one network runs: its bridge, its dnsmasq, and
(for all running networks at once) the firewall table. Blocking: called off the loop.

Starting runs its steps in order and keeps an undo for each step done; a failure undoes
them in reverse, so a refused or failed start leaves nothing behind (no bridge, no
dnsmasq, no rule). Stopping removes exactly what starting made: the bridge only when it
carries our mark (netlink.ALIAS_PREFIX), and never a host bridge of a ``bridge`` network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qumran.config.network import NetworkSpec
from qumran.daemon.network import addressing, dnsmasq, netlink, nft
from qumran.errors import InvalidState, QumranError

log = logging.getLogger(__name__)


class NetworkError(QumranError):
    """The host would not do what a network needs (netlink, nft or dnsmasq failed)."""

    code = "network-error"
    http_status = 500


@dataclass(frozen=True)
class Runtime:
    """What a running network is, on the host."""

    bridge_index: int | None  # the bridge NICs join (None: a user network)
    dnsmasq_pid: int | None


def _failure(what: str, exc: Exception) -> NetworkError:
    return NetworkError(f"{what}: {exc}")


class Plumbing:
    def __init__(self, run_dir: Path, state_dir: Path) -> None:
        self.run = run_dir / "networks"
        self.state = state_dir / "networks"

    def files(self, name: str) -> dnsmasq.Files:
        return dnsmasq.Files(self.run / name, self.state / name)

    # the bridge ----------------------------------------------------------------------
    def own_bridge(self, spec: NetworkSpec) -> netlink.Link | None:
        """The network's bridge if it exists and is ours; InvalidState if an interface of
        that name exists that qumrand did not make for this network."""
        assert spec.bridge_name is not None
        link = netlink.find_link(spec.bridge_name)
        if link is None:
            return None
        if link.alias != netlink.our_alias(spec.name) or link.kind != "bridge":
            raise InvalidState(
                f"bridge: an interface named {spec.bridge_name} exists already and is not "
                f"network {spec.name!r}'s; choose another bridge name (bridge: NAME)"
            )
        return link

    def host_bridge(self, spec: NetworkSpec) -> netlink.Link:
        """A ``bridge`` network's existing host bridge."""
        assert spec.bridge is not None
        link = netlink.find_link(spec.bridge)
        if link is None:
            raise InvalidState(
                f"bridge: no interface named {spec.bridge} on this host; create the bridge "
                "first (ip link add NAME type bridge) or fix the name"
            )
        if link.kind != "bridge":
            raise InvalidState(
                f"bridge: {spec.bridge} is a {link.kind or 'plain'} interface, not a bridge"
            )
        return link

    # start and stop ------------------------------------------------------------------
    def start(self, spec: NetworkSpec, rules: Sequence[nft.Rules],
              rules_before: Sequence[nft.Rules]) -> Runtime:  # fmt: skip
        """Bring the network up. ``rules``: the firewall table with it, ``rules_before``:
        the one without it (restored if a later step fails)."""
        if spec.type == "user":
            return Runtime(None, None)
        if spec.type == "bridge":
            return Runtime(self.host_bridge(spec).index, None)
        undo: list[Callable[[], None]] = []
        try:
            return self._start_managed(spec, rules, rules_before, undo)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception as exc:  # the first failure is the one to report
                    log.error("undoing a step of network %s's start failed: %s", spec.name, exc)
            raise

    def _start_managed(self, spec: NetworkSpec, rules: Sequence[nft.Rules],
                       rules_before: Sequence[nft.Rules], undo: list[Callable[[], None]]
                       ) -> Runtime:  # fmt: skip
        assert spec.ipv4 is not None and spec.bridge_name is not None
        files = self.files(spec.name)
        leftover = self.own_bridge(spec)
        addressing.check_host(spec, own_bridge=leftover.index if leftover else None)
        self._remove_leftovers(spec, leftover, files)
        try:
            index = netlink.create_bridge(spec.bridge_name, spec.name)
            undo.append(lambda: netlink.delete_link(index))
            netlink.add_address(index, spec.ipv4.address)
            netlink.set_up(index)
        except OSError as exc:
            raise _failure(f"cannot make bridge {spec.bridge_name}", exc) from None
        if spec.type == "nat" and not netlink.ip_forwarding():
            log.info("turning on IPv4 forwarding (net.ipv4.ip_forward=1) for NAT network %s",
                     spec.name)  # fmt: skip
            netlink.ip_forwarding(True)
        self.load_rules(rules)
        undo.append(lambda: self.load_rules(rules_before))
        undo.append(lambda: dnsmasq.remove_files(files))
        pid = self._start_dnsmasq(spec, files)
        return Runtime(index, pid)

    def _start_dnsmasq(self, spec: NetworkSpec, files: dnsmasq.Files) -> int:
        assert spec.bridge_name is not None
        try:
            dnsmasq.prepare(files, dnsmasq.config(spec, spec.bridge_name, files))
            return dnsmasq.start(files)
        except (OSError, dnsmasq.DnsmasqFailure) as exc:
            raise _failure(f"dnsmasq for network {spec.name!r} would not start", exc) from None

    def _remove_leftovers(self, spec: NetworkSpec, bridge: netlink.Link | None,
                          files: dnsmasq.Files) -> None:  # fmt: skip
        """What an earlier qumrand left of this network when it died mid-start or
        mid-stop: its dnsmasq and its (marked) bridge."""
        pid = dnsmasq.running(files)
        if pid is not None:
            log.warning("network %s: stopping a dnsmasq left running (pid %d)", spec.name, pid)
            dnsmasq.stop(pid)
        if bridge is not None:
            log.warning("network %s: removing bridge %s left behind", spec.name, bridge.name)
            netlink.delete_link(bridge.index)

    def stop(self, spec: NetworkSpec, rules_after: Sequence[nft.Rules]) -> None:
        """Take the network down: dnsmasq, its rules, its bridge (leases are kept)."""
        if not spec.managed:
            return
        files = self.files(spec.name)
        pid = dnsmasq.running(files)
        if pid is not None:
            dnsmasq.stop(pid)
        self.load_rules(rules_after)
        try:
            bridge = self.own_bridge(spec)
        except InvalidState:
            bridge = None  # someone else's now: not ours to remove
            log.warning("network %s: its bridge name is now another interface's; left alone",
                        spec.name)  # fmt: skip
        if bridge is not None:
            try:
                netlink.delete_link(bridge.index)
            except OSError as exc:
                raise _failure(f"cannot remove bridge {bridge.name}", exc) from None
        dnsmasq.remove_files(files)

    # a restarted qumrand ---------------------------------------------------------------
    def adopt(self, spec: NetworkSpec) -> tuple[Runtime, list[str]]:
        """Take over a network an earlier qumrand started: what is there is kept as it is;
        what is missing is made again. Returns the runtime and what was repaired."""
        if spec.type == "user":
            return Runtime(None, None), []
        if spec.type == "bridge":
            return Runtime(self.host_bridge(spec).index, None), []
        assert spec.ipv4 is not None and spec.bridge_name is not None
        repaired: list[str] = []
        try:
            link = self.own_bridge(spec)
            if link is None:
                index = netlink.create_bridge(spec.bridge_name, spec.name)
                repaired.append(f"bridge {spec.bridge_name} was gone: made again")
            else:
                index = link.index
            if spec.ipv4.address not in [a for _, a in netlink.addresses(index)]:
                netlink.add_address(index, spec.ipv4.address)
                repaired.append(f"address {spec.ipv4.address} was missing: added")
            if link is None or not link.up:
                netlink.set_up(index)
                if link is not None:
                    repaired.append(f"bridge {spec.bridge_name} was down: set up")
        except OSError as exc:
            raise _failure(f"cannot repair bridge {spec.bridge_name}", exc) from None
        files = self.files(spec.name)
        pid = dnsmasq.running(files)
        if pid is None:
            pid = self._start_dnsmasq(spec, files)
            repaired.append(f"dnsmasq was not running: started again (pid {pid})")
        return Runtime(index, pid), repaired

    # the firewall table ----------------------------------------------------------------
    @property
    def _nft_state(self) -> Path:
        return self.run / "nft.json"

    def load_rules(self, rules: Sequence[nft.Rules]) -> None:
        """Load the table for ``rules`` (none: remove it) and remember what it lists."""
        script = nft.ruleset(rules)
        try:
            nft.load(script)
        except nft.NftFailure as exc:
            raise _failure("cannot load the firewall rules (nft)", exc) from None
        self.run.mkdir(parents=True, exist_ok=True, mode=0o755)
        saved = {"script": _digest(script), "listing": nft.listing() if rules else None}
        self._nft_state.write_text(json.dumps(saved))

    def rules_intact(self, rules: Sequence[nft.Rules]) -> bool:
        """Whether the table is exactly the one the last load made for ``rules``."""
        try:
            saved = json.loads(self._nft_state.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(saved, dict) or saved.get("script") != _digest(nft.ruleset(rules)):
            return False
        with contextlib.suppress(nft.NftFailure):
            return bool(nft.listing() == saved.get("listing"))
        return False


def _digest(script: str) -> str:
    return hashlib.sha256(script.encode()).hexdigest()
