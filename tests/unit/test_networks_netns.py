"""Virtual networks for real: a qumrand inside a network namespace of the test's own makes
bridges, dnsmasq and nftables rules there; "guests" are namespaces on veth pairs that get
their leases from dnsmasq; the "outside world" is one more namespace behind an uplink.
Nothing here touches the host's own network namespace, and dnsmasq forwards nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import netvm
from daemon_harness import Daemon, remove_tmpdir, short_tmpdir
from netns import Guest, Netns, available, namespaces

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

NAT = {
    "name": "lan", "type": "nat", "domain": "lan.test", "dns": {"forward": False},
    "ipv4": {"address": "192.168.150.1/24",
             "dhcp": {"start": "192.168.150.100", "end": "192.168.150.120"}},
}  # fmt: skip
ISOLATED = {
    "name": "iso", "type": "isolated", "dns": {"forward": False},
    "ipv4": {"address": "10.77.0.1/24", "dhcp": {"start": "10.77.0.10", "end": "10.77.0.20"}},
}  # fmt: skip


OUTSIDE = "10.99.0.2"  # the stand-in for the world, behind the daemon namespace's uplink
UPLINK = "10.99.0.1"


class NetDaemon(netvm.NetDaemon):
    """A qumrand (fake driver) in its own network namespace, with an uplink to an
    "outside" one (tests/netvm.py), and the steps these tests repeat."""

    UPLINK, OUTSIDE = UPLINK, OUTSIDE

    def define(self, doc: dict[str, Any]) -> Any:
        return self.call("POST", "/v1/networks", json=doc)

    def start(self, name: str) -> Any:
        return self.call("POST", f"/v1/networks/{name}/start")

    def guest(self, ns: Netns, bridge: str, hostname: str) -> Guest:
        return Guest(self.ns, ns, bridge, hostname, self.root)

    def snapshot(self) -> tuple[set[str], Any, list[int]]:
        """What a refused request must not change: links, ruleset, dnsmasq processes."""
        return set(self.ns.links()), self.ns.ruleset(), sorted(self.ns.processes("dnsmasq"))


@pytest.fixture
def net() -> Iterator[NetDaemon]:
    root = short_tmpdir()
    with namespaces("d", "o") as (ns, outside):
        nd = NetDaemon(root, ns, outside, "fake")
        nd.daemon.start()
        try:
            yield nd
        finally:
            nd.daemon.cleanup()
            remove_tmpdir(root)


def test_nat_guest_gets_a_lease_resolves_names_and_goes_out_masqueraded(net: NetDaemon) -> None:
    info = net.define(NAT)
    assert info["active"] is False and info["bridge"] == "qbr-lan"
    info = net.start("lan")
    assert info["active"] and info["dnsmasq_pid"] in net.ns.processes("dnsmasq")
    with namespaces("g1", "g2") as (g1ns, g2ns):
        g1, g2 = net.guest(g1ns, "qbr-lan", "alpha"), net.guest(g2ns, "qbr-lan", "beta")
        ip1, router = g1.dhcp()
        ip2, _ = g2.dhcp()
        assert router == "192.168.150.1"
        for ip in (ip1, ip2):
            assert 100 <= int(ip.rsplit(".", 1)[1]) <= 120
        assert g1.ping("192.168.150.1") and g1.ping(ip2)
        # Names through dnsmasq: its own and the other guest's, nothing forwarded.
        for name, want in (("alpha.lan.test", ip1), ("beta.lan.test", ip2), ("beta", ip2)):
            # (busybox asks for AAAA too: no upstream answers it, so its status is not 0)
            out = g1.ns.run("busybox", "nslookup", name, "192.168.150.1", check=False).stdout
            assert f"Address: {want}" in out, out
        leases = net.call("GET", "/v1/networks/lan/leases")
        assert {(x["mac"], x["ip"], x["hostname"]) for x in leases} == {
            (g1.mac, ip1, "alpha"),
            (g2.mac, ip2, "beta"),
        }
        # Out through NAT: the outside sees the uplink's address, not the guest's.
        listener = net.outside.popen("python3", "-c", LISTENER, OUTSIDE, stdout=subprocess.PIPE)
        try:
            assert listener.stdout is not None
            assert listener.stdout.readline().strip() == "ready"
            g1.ns.run("busybox", "nc", "-w", "5", OUTSIDE, "7777", input="hello\n")
            assert listener.stdout.readline().strip() == UPLINK
        finally:
            listener.kill()
            listener.wait()


# A TCP listener in the outside namespace: prints the address each connection comes from.
LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777)); s.listen(); print("ready", flush=True)
conn, peer = s.accept(); print(peer[0], flush=True); conn.close()
"""


def test_isolated_guest_reaches_the_bridge_and_nothing_beyond(net: NetDaemon) -> None:
    net.define(NAT), net.start("lan")  # forwarding on in the namespace: the rules must stop it
    net.define(ISOLATED)
    net.start("iso")
    with namespaces("g1", "g2", "g3") as (g1ns, g2ns, g3ns):
        a, b = net.guest(g1ns, "qbr-iso", "a"), net.guest(g2ns, "qbr-iso", "b")
        ip_a, router = a.dhcp()
        ip_b, _ = b.dhcp()
        assert router == ""  # no router offered on an isolated network
        assert a.ping("10.77.0.1") and a.ping(ip_b)
        a.ns.ip("route", "add", "default", "via", "10.77.0.1")
        net.outside.ip("route", "add", "10.77.0.0/24", "via", UPLINK)  # a way back, too
        assert not a.ping(OUTSIDE)  # dropped by qumrand's forward rules
        n = net.guest(g3ns, "qbr-lan", "n")
        ip_n, _ = n.dhcp()
        assert n.ping(OUTSIDE)  # while the NAT network's guest gets out
        assert not a.ping(ip_n) and not n.ping(ip_a)  # and the networks do not meet
        # The rules are what stops them: without the table, the same packets pass.
        net.ns.run("nft", "delete", "table", "inet", "qumran")
        assert a.ping(OUTSIDE) and a.ping(ip_n)


def test_restart_readopts_without_rebuilding(net: NetDaemon) -> None:
    net.define(NAT), net.define(ISOLATED)
    net.start("lan"), net.start("iso")
    with namespaces("g1") as (g1ns,):
        guest = net.guest(g1ns, "qbr-lan", "keep")
        ip, _ = guest.dhcp()
        before_pids = {n["name"]: n["dnsmasq_pid"] for n in net.call("GET", "/v1/networks")}
        links = net.ns.links()
        ruleset = net.ns.ruleset()
        net.daemon.restart()
        after = {n["name"]: n for n in net.call("GET", "/v1/networks")}
        assert {k: v["dnsmasq_pid"] for k, v in after.items()} == before_pids
        assert all(v["active"] for v in after.values())
        now = net.ns.links()
        for bridge in ("qbr-lan", "qbr-iso"):
            assert now[bridge]["ifindex"] == links[bridge]["ifindex"]
        assert net.ns.ruleset() == ruleset
        assert "nothing rebuilt" in net.daemon.log.read_text()
        assert [x["ip"] for x in net.call("GET", "/v1/networks/lan/leases")] == [ip]
        assert guest.ping("192.168.150.1")
        # What is missing is repaired: dnsmasq killed, the table deleted.
        os.kill(before_pids["lan"], signal.SIGKILL)
        net.ns.run("nft", "delete", "table", "inet", "qumran")
        net.daemon.restart()
        after = {n["name"]: n for n in net.call("GET", "/v1/networks")}
        assert after["lan"]["dnsmasq_pid"] != before_pids["lan"]
        assert after["iso"]["dnsmasq_pid"] == before_pids["iso"]
        assert net.ns.ruleset() == ruleset
        assert net.ns.links()["qbr-lan"]["ifindex"] == links["qbr-lan"]["ifindex"]
        text = net.daemon.log.read_text()
        assert "dnsmasq was not running" in text and "loaded again" in text


def test_destroy_removes_exactly_what_start_made(net: NetDaemon) -> None:
    empty = net.snapshot()
    net.define(NAT)
    net.start("lan")
    assert "qbr-lan" in net.ns.links() and net.ns.processes("dnsmasq")
    info = net.call("POST", "/v1/networks/lan/destroy")
    assert info["active"] is False and info["dnsmasq_pid"] is None
    assert net.snapshot() == empty
    net.call("DELETE", "/v1/networks/lan")
    assert net.call("GET", "/v1/networks") == []


def test_refusals_leave_nothing(net: NetDaemon) -> None:
    # dnsmasq failing (the DHCP port taken by another server): nothing is left behind.
    net.define(ISOLATED)
    before = net.snapshot()
    blocker = net.ns.popen("python3", "-c", PORT67, stdout=subprocess.PIPE)
    try:
        assert blocker.stdout is not None and blocker.stdout.readline().strip() == "ready"
        message = net.refused("POST", "/v1/networks/iso/start", 500)
        assert "dnsmasq" in message
        assert net.snapshot() == before
    finally:
        blocker.kill()
        blocker.wait()
    assert net.call("GET", "/v1/networks/iso")["active"] is False
    net.call("DELETE", "/v1/networks/iso")
    net.define(NAT)
    net.start("lan")
    before = net.snapshot()
    cases: list[tuple[str, str, int, dict[str, Any], str]] = [
        ("POST", "/v1/networks", 400, {**ISOLATED, "ipv4": {"address": "192.168.150.9/16"}},
         "overlaps network 'lan'"),
        ("POST", "/v1/networks", 400, {**ISOLATED, "ipv4": {"address": "10.99.0.5/24"}},
         "overlaps the host's"),
        ("POST", "/v1/networks", 409, {**ISOLATED, "bridge": "up0"}, "not network 'iso'"),
        ("POST", "/v1/networks", 400, {**ISOLATED, "ipv4": {"address": "10.77.0.1/24", "dhcp":
         {"start": "10.77.1.2", "end": "10.77.1.9"}}}, "outside the subnet"),
        ("POST", "/v1/networks", 400, {**ISOLATED, "name": "../etc"}, "is a path"),
        ("POST", "/v1/networks", 409, NAT, "already exists"),
        ("POST", "/v1/networks/lan/start", 409, {}, "active already"),
        ("DELETE", "/v1/networks/lan", 409, {}, "stop it first"),
    ]  # fmt: skip
    for method, path, status, doc, words in cases:
        message = net.refused(method, path, status, **({"json": doc} if doc else {}))
        assert words in message, message
        assert net.snapshot() == before, (path, doc)
    # A bridge name someone else took after the network was defined: refused at start.
    net.define(ISOLATED)
    net.ns.ip("link", "add", "qbr-iso", "type", "bridge")
    before = net.snapshot()
    assert "not network 'iso'" in net.refused("POST", "/v1/networks/iso/start", 409)
    assert net.snapshot() == before


# Something else on the DHCP port of every address: dnsmasq cannot bind and says so.
PORT67 = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 67)); print("ready", flush=True)
import time; time.sleep(60)
"""


# The Manager sets the hook (the VMs running on a network) with the VMs' NICs; here it
# is set by hand on a real Networks facade, run inside the test's namespace.
ATTACHED = """
import asyncio, sys
from pathlib import Path
from qumran.daemon.manager import Caller
from qumran.daemon.network import Networks
from qumran.daemon.store import Store
from qumran.errors import InvalidState

async def main(root):
    nets = Networks(Store(root / "state" / "q.db"), root / "run", root / "state", 0,
                    manage_host=True)
    await nets.restore()
    me = Caller(0, 0)
    await nets.define(me, {"name": "n", "type": "isolated", "dns": {"forward": False},
                           "ipv4": {"address": "10.66.0.1/24"}})
    await nets.start(me, "n")
    nets.attached = lambda name: ["web1", "db"] if name == "n" else []
    try:
        await nets.destroy(me, "n")
    except InvalidState as exc:
        print(exc.message)
    print(nets.runtime["n"].bridge_index is not None)
    print((await nets.destroy(me, "n", force=True))["active"])

asyncio.run(main(Path(sys.argv[1])))
"""


def test_destroy_with_vms_attached_is_refused_unless_forced(net: NetDaemon) -> None:
    root = net.root / "inproc"
    out = net.ns.run(sys.executable, "-c", ATTACHED, str(root),
                     env={**os.environ}).stdout.splitlines()  # fmt: skip
    assert out[0] == (
        "network 'n' has VMs attached (db, web1); stop them first, or use "
        "`qumran net-destroy --force n`"
    )
    assert out[1:] == ["True", "False"]
    assert "qbr-n" not in net.ns.links()


def test_autostart_networks_start_with_the_daemon(net: NetDaemon) -> None:
    net.define({**ISOLATED, "autostart": True})
    assert net.call("GET", "/v1/networks/iso")["autostart"] is True
    net.daemon.restart()
    info = net.call("GET", "/v1/networks/iso")
    assert info["active"] and info["dnsmasq_pid"] in net.ns.processes("dnsmasq")
    net.call("PUT", "/v1/networks/iso/autostart", json={"enabled": False})
    assert net.call("GET", "/v1/networks/iso")["autostart"] is False


def test_cli_commands(net: NetDaemon) -> None:
    lan = net.root / "lan.yaml"
    lan.write_text(
        "name: lan\ntype: nat\ndomain: lan.test\ndns: {forward: false}\n"
        "ipv4:\n  address: 192.168.150.1/24\n"
        "  dhcp: {start: 192.168.150.100, end: 192.168.150.120}\n"
    )

    def qumran(*argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "qumran.cli.main", *argv], text=True,
                              capture_output=True, env=net.daemon.env, timeout=60)  # fmt: skip
        assert (done.returncode == 0) == ok, done.stderr
        return done

    assert "network 'lan' defined from" in qumran("net-define", str(lan)).stdout
    assert "started" in qumran("net-start", "lan").stdout
    table = qumran("net-list").stdout
    assert "lan" in table and "active" in table and "qbr-lan" in table
    info = json.loads(qumran("--json", "net-info", "lan").stdout)
    assert (
        info["address"] == "192.168.150.1/24" and info["dhcp"] == "192.168.150.100-192.168.150.120"
    )
    assert "Bridge" in qumran("net-info", "lan").stdout
    assert json.loads(qumran("net-dhcp-leases", "lan", "--json").stdout) == []
    assert "Hostname" in qumran("net-dhcp-leases", "lan").stdout
    assert json.loads(qumran("--json", "net-autostart", "lan").stdout)["autostart"] is True
    refused = qumran("net-undefine", "lan", ok=False).stderr
    assert refused.count("\n") == 1 and "net-destroy lan" in refused
    assert "destroyed" in qumran("net-destroy", "lan", "--force").stdout
    assert "undefined" in qumran("net-undefine", "lan").stdout
    bad = net.root / "bad.toml"
    bad.write_text('name = "x"\ntype = "nat"\n[ipv4]\naddress = "10.1.2.3/33"\n')
    error = qumran("net-define", str(bad), ok=False).stderr
    assert error.count("\n") == 1 and "ipv4.address" in error, error


# A per-user qumrand: run as a system user (in a namespace all the same).
def test_a_per_user_daemon_offers_user_networks_only() -> None:
    from daemon_harness import system_user

    account = system_user("qumran-netuser")
    root = short_tmpdir()
    os.chown(root, account.pw_uid, account.pw_gid)
    with namespaces("u") as (ns,), open(root / "qumrand.log", "wb") as log:
        daemon = Daemon(root)
        argv = [
            "runuser", "-u", account.pw_name, "--", sys.executable, "-m", "qumran.daemon.main",
            "--socket", daemon.socket, "--state-dir", str(root / "state"),
            "--run-dir", str(root / "run"), "--driver", "fake", "--no-config",
        ]  # fmt: skip
        env = {**os.environ, "HOME": str(root)}
        proc = ns.popen(*argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 30
            while not Path(daemon.socket).exists():
                assert proc.poll() is None and time.monotonic() < deadline, (
                    root / "qumrand.log"
                ).read_text()
                time.sleep(0.05)
            refused = daemon.call("POST", "/v1/networks", json=NAT)
            assert refused.status_code == 400
            message = refused.json()["error"]["message"]
            assert "offers `user` networks only" in message and "not root" in message
            made = daemon.call("POST", "/v1/networks", json={"name": "mine", "type": "user"})
            assert made.status_code == 201, made.text
            started = daemon.call("POST", "/v1/networks/mine/start").json()
            assert started["active"] and started["bridge"] is None
            assert set(ns.links()) == {"lo"}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            remove_tmpdir(root)


def test_the_default_network_is_made_once_on_a_free_subnet() -> None:
    root = short_tmpdir()
    with namespaces("d") as (ns,):
        # 192.168.122.0/24 is taken here (an address): the next free /24 is chosen.
        ns.ip("link", "add", "x0", "type", "veth", "peer", "name", "x1")
        ns.ip("addr", "add", "192.168.122.7/24", "dev", "x0")
        daemon = Daemon(root, netns=ns.name, options=("--default-network",))
        daemon.start()
        try:
            info = daemon.call("GET", "/v1/networks/default").json()
            assert info["type"] == "nat" and info["active"] and info["autostart"]
            assert info["shared"] and info["address"] == "192.168.123.1/24"
            assert "defined the default NAT network on 192.168.123.0/24" in daemon.log.read_text()
            assert daemon.call("POST", "/v1/networks/default/destroy").status_code == 200
            assert daemon.call("DELETE", "/v1/networks/default").status_code == 204
            daemon.restart()
            assert daemon.call("GET", "/v1/networks").json() == []  # undefined stays so
        finally:
            daemon.cleanup()
            remove_tmpdir(root)
