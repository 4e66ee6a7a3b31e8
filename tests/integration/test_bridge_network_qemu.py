"""A ``bridge`` network, for real: a QEMU (TCG) guest's TAP joins a bridge qumrand did not
make, and the guest talks to the machines already on it.

The "host's" bridge is made by the test in qumrand's network namespace (tests/netvm.py),
with an address of its own (the host) and a veth port into a peer namespace (another
machine on the host's LAN). qumrand runs no DHCP on a bridge network, so the guest is
given a static address. Stopping the network leaves the bridge as it was: it is the
host's, not qumrand's. Nothing is made in the host's own namespace.
"""

from __future__ import annotations

import time

import pytest

from netns import available, namespaces, veth
from netvm import boot, define_demo, net_daemon, ping, sh
from qumran.images.demo import build_demo

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]

BRIDGE = "hbr0"
HOST, PEER, GUEST = "10.77.0.1", "10.77.0.2", "10.77.0.50"


def test_a_vm_on_a_bridge_network_reaches_the_machines_on_the_host_bridge() -> None:
    with net_daemon("real") as net, namespaces("p") as (peer,):
        net.ns.ip("link", "add", BRIDGE, "type", "bridge")
        net.ns.ip("addr", "add", f"{HOST}/24", "dev", BRIDGE)
        net.ns.ip("link", "set", BRIDGE, "up")
        veth(net.ns, "hp0", peer, "eth0")
        net.ns.ip("link", "set", "hp0", "master", BRIDGE)
        peer.ip("addr", "add", f"{PEER}/24", "dev", "eth0")
        before = net.ns.links()[BRIDGE]

        net.network({"name": "hostlan", "type": "bridge", "bridge": BRIDGE})
        info = net.call("GET", "/v1/networks/hostlan")
        assert (info["active"], info["bridge"], info["dnsmasq_pid"]) == (True, BRIDGE, None)
        vm = define_demo(net, build_demo(), "b1", "hostlan")
        boot(net, "b1")
        tap = net.call("GET", "/v1/vms/b1/interfaces")[0]["interface"]
        assert net.tap(tap)["master"] == BRIDGE
        # qumrand made no dnsmasq and no firewall table for it.
        assert net.ns.processes("dnsmasq") == []
        assert not any("table" in item for item in net.ns.ruleset())

        status, out = sh(net, "b1", f"ip link set eth0 up && ip addr add {GUEST}/24 dev eth0")
        assert status == 0, out
        assert ping(net, "b1", PEER)
        assert ping(net, "b1", HOST)
        done = peer.run("busybox", "ping", "-c", "2", "-W", "3", GUEST, check=False)
        assert done.returncode == 0, done.stdout
        # The guest's MAC is the one qumrand gave its NIC, seen on the host's bridge.
        mac = vm["definition"]["nics"][0]["mac"]
        fdb = net.ns.run("bridge", "fdb", "show", "br", BRIDGE).stdout
        assert f"{mac} dev {tap}" in fdb, fdb

        # Stopped with the VM gone: the TAP goes, the host's bridge stays as it was.
        assert "(b1)" in net.refused("POST", "/v1/networks/hostlan/destroy", 409)
        net.call("POST", "/v1/vms/b1/destroy")
        net.call("POST", "/v1/networks/hostlan/destroy")
        deadline = time.monotonic() + 5
        while tap in (after := net.ns.links()):  # it goes with the QEMU process
            assert time.monotonic() < deadline, f"TAP {tap} still there"
            time.sleep(0.05)
        assert after[BRIDGE]["ifindex"] == before["ifindex"] and "UP" in after[BRIDGE]["flags"]
        assert after["hp0"]["master"] == BRIDGE
        assert f"inet {HOST}/24" in net.ns.ip("-4", "-o", "addr", "show", "dev", BRIDGE)
