"""Network namespaces for tests: where a test's qumrand, its "guests" and its "outside
world" live, so that no bridge, address, route or firewall rule is ever made in the
host's own namespace (ARCHITECTURE.md, "Network tests stay on this machine").

Every command here names its namespace (``ip -n NS``, ``ip netns exec NS``); nothing is
run against the host's. :meth:`Netns.delete` kills whatever still runs in a namespace
(qumrand, dnsmasq, a udhcpc) before removing it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_count = itertools.count()

# busybox udhcpc calls this with the lease in its environment; it configures the
# guest's interface (busybox ships no default script on Debian).
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then ip route replace default via "${router%% *}" dev "$interface"; fi
    echo "$ip $router" > "$LEASE_OUT" ;;
esac
exit 0
"""


def available() -> str | None:
    """Why network namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    for tool in ("ip", "nft", "dnsmasq", "busybox"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed"
    return None


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, role: str) -> Netns:
        name = f"qt{os.getpid() % 100000}-{next(_count)}-{role}"[:30]
        subprocess.run(["ip", "netns", "add", name], check=True)
        ns = cls(name)
        ns.ip("link", "set", "lo", "up")
        return ns

    def ip(self, *args: str) -> str:
        done = subprocess.run(["ip", "-n", self.name, *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ip -n {self.name} {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def run(self, *cmd: str, check: bool = True, timeout: float = 30, **kwargs: Any
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        done = subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True,
                              text=True, timeout=timeout, **kwargs)  # fmt: skip
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} in {self.name}: {done.stderr or done.stdout}")
        return done

    def popen(self, *cmd: str, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], text=True, **kwargs)

    @property
    def inode(self) -> int:
        return os.stat(f"/run/netns/{self.name}").st_ino

    def processes(self, comm: str | None = None) -> list[int]:
        """Live processes in this namespace (``comm``: with that name only)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino != self.inode:
                    continue
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2] in "ZX":
                continue
            if comm is None or stat[stat.index("(") + 1 : stat.rindex(")")] == comm:
                found.append(int(entry))
        return found

    def links(self) -> dict[str, dict[str, Any]]:
        return {link["ifname"]: link for link in json.loads(self.ip("-j", "-d", "link"))}

    def ruleset(self) -> list[dict[str, Any]]:
        """``nft -j list ruleset`` of this namespace, without handles and metainfo."""
        items = json.loads(self.run("nft", "-j", "list", "ruleset").stdout)["nftables"]
        return [_no_handles(i) for i in items if "metainfo" not in i]

    def delete(self) -> None:
        for _ in range(50):
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def _no_handles(item: Any) -> Any:
    if isinstance(item, dict):
        return {k: _no_handles(v) for k, v in item.items() if k != "handle"}
    if isinstance(item, list):
        return [_no_handles(v) for v in item]
    return item


@contextlib.contextmanager
def namespaces(*roles: str) -> Iterator[list[Netns]]:
    made: list[Netns] = []
    try:
        for role in roles:
            made.append(Netns.create(role))
        yield made
    finally:
        for ns in reversed(made):
            ns.delete()


def veth(a: Netns, a_name: str, b: Netns, b_name: str) -> None:
    """A veth pair made inside ``a``, its peer moved to ``b`` (never in the host's)."""
    a.ip("link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name)
    a.ip("link", "set", a_name, "up")
    b.ip("link", "set", b_name, "up")


class Guest:
    """A stand-in for a VM: a namespace on a network's bridge through a veth pair, its
    address from the network's dnsmasq (busybox udhcpc)."""

    def __init__(self, daemon_ns: Netns, ns: Netns, bridge: str, hostname: str,
                 workdir: Path) -> None:  # fmt: skip
        self.ns = ns
        self.hostname = hostname
        port = f"v{ns.name[-8:]}"[:15]
        veth(daemon_ns, port, ns, "eth0")
        daemon_ns.ip("link", "set", port, "master", bridge)
        self.mac = ns.links()["eth0"]["address"]
        self.script = workdir / f"udhcpc-{hostname}.sh"
        self.script.write_text(UDHCPC_SCRIPT)
        self.script.chmod(0o755)
        self.lease_out = workdir / f"lease-{hostname}"

    def dhcp(self, timeout: int = 20) -> tuple[str, str]:
        """Ask for a lease; returns (address, router) as udhcpc got them."""
        self.ns.run(
            "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", str(timeout), "-T", "1",
            "-x", f"hostname:{self.hostname}", "-s", str(self.script),
            env={**os.environ, "LEASE_OUT": str(self.lease_out)}, timeout=timeout + 10,
        )  # fmt: skip
        ip, _, router = self.lease_out.read_text().strip().partition(" ")
        return ip, router

    def ping(self, address: str, count: int = 1) -> bool:
        done = self.ns.run("busybox", "ping", "-c", str(count), "-W", "2", address, check=False)
        return done.returncode == 0
