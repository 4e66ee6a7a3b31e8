"""VMs on qumrand's networks, for real: QEMU (TCG) guests with a TAP on a NAT network and
on an isolated one, their leases from dnsmasq, traffic between them, out through NAT, and
across a qumrand restart.

qumrand runs in a network namespace of the test's own (tests/netvm.py), with an uplink
into an "outside" namespace; nothing is made in the host's own namespace and no packet
leaves this machine. The guests are the busybox demo guest, driven over their consoles
(tests/netvm.py). The tests run in file order, each leaving the VMs as the next one
expects.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from netns import available
from netvm import (
    ISO,
    LAN,
    OUTSIDE,
    UPLINK,
    NetDaemon,
    boot,
    define_demo,
    dhcp,
    guest_ip,
    net_daemon,
    ping,
    qumran,
    sh,
)
from qumran.images.demo import build_demo

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]

VMS = ("v1", "v2")


@pytest.fixture(scope="module")
def net() -> Iterator[NetDaemon]:
    with net_daemon("real") as nd:
        nd.network(LAN)
        nd.network(ISO)
        yield nd


def define(net: NetDaemon, name: str, network: str) -> dict[str, Any]:
    return define_demo(net, build_demo(), name, network)


def test_two_vms_on_a_nat_network_get_their_leases(net: NetDaemon) -> None:
    for name in VMS:
        define(net, name, "lan")
        boot(net, name)
    addresses = {name: dhcp(net, name) for name in VMS}
    for name, ip in addresses.items():
        assert ip.startswith("192.168.151.")
        # domifaddr: the leased address, the one the guest has.
        assert qumran(net, "domifaddr", name, "--ip").stdout.strip() == ip
        rows = json.loads(qumran(net, "--json", "domifaddr", name).stdout)
        assert [(r["network"], r["ip"], r["hostname"]) for r in rows] == [("lan", ip, name)]
    listing = qumran(net, "domiflist", "v1").stdout
    mac = net.call("GET", "/v1/vms/v1")["definition"]["nics"][0]["mac"]
    assert "lan" in listing and mac in listing and "virtio" in listing


def test_they_reach_each_other_the_bridge_and_names_through_dnsmasq(net: NetDaemon) -> None:
    v2 = guest_ip(net, "v2")
    assert ping(net, "v1", v2)
    assert ping(net, "v1", "192.168.151.1")
    for name in ("v2", "v2.lan.test"):
        _, out = sh(net, "v1", f"nslookup {name} 192.168.151.1")
        assert f"Address: {v2}" in out or f"Address 1: {v2}" in out, out


LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777)); s.listen(); print("ready", flush=True)
conn, peer = s.accept(); print(peer[0], flush=True); conn.close()
"""


def test_out_through_nat_with_the_uplinks_address(net: NetDaemon) -> None:
    listener = net.outside.popen("python3", "-c", LISTENER, OUTSIDE, stdout=subprocess.PIPE)
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        assert sh(net, "v1", f"echo hello | nc -w 5 {OUTSIDE} 7777")[0] == 0
        assert listener.stdout.readline().strip() == UPLINK
    finally:
        listener.kill()
        listener.wait()


def tap_bytes(net: NetDaemon, tap: str) -> tuple[int, int]:
    """The TAP's own rx/tx bytes in the daemon's namespace (the host's side)."""
    link = json.loads(net.ns.ip("-j", "-s", "link", "show", "dev", tap))[0]
    stats = link["stats64"]
    return stats["rx"]["bytes"], stats["tx"]["bytes"]


def test_stats_count_a_ping_flood_from_the_guests_side(net: NetDaemon) -> None:
    tap = qumran_json_rows(net, "v1")[0]["interface"]
    count, size = 200, 1000
    frame = 14 + 20 + 8 + size  # Ethernet + IPv4 + ICMP headers + payload
    before = net.call("GET", "/v1/vms/v1/stats")["samples"][-1]
    host_rx, host_tx = tap_bytes(net, tap)
    assert ping(net, "v1", "192.168.151.1", f"-A -q -c {count} -s {size}")
    after_rx, after_tx = tap_bytes(net, tap)
    # The TAP received the guest's requests, and sent it the replies.
    assert count * frame <= after_rx - host_rx <= count * frame + 20_000
    assert count * frame <= after_tx - host_tx <= count * frame + 20_000
    time.sleep(2.1)  # the sampler's interval: the next sample is taken after the flood
    sample = net.call("GET", "/v1/vms/v1/stats")["samples"][-1]
    assert sample["t"] > before["t"]
    sent = sample["net_tx_bytes"] - before["net_tx_bytes"]
    got = sample["net_rx_bytes"] - before["net_rx_bytes"]
    assert count * frame <= sent <= count * frame + 40_000, (sent, before, sample)
    assert count * frame <= got <= count * frame + 40_000, (got, before, sample)
    [nic] = sample["net_interfaces"]
    assert (nic["interface"], nic["network"]) == (tap, "lan")
    assert nic["tx_packets"] >= count and nic["rx_packets"] >= count


def qumran_json_rows(net: NetDaemon, name: str) -> list[dict[str, Any]]:
    proc = qumran(net, "--json", "domiflist", name)
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def test_net_destroy_is_refused_naming_the_vms(net: NetDaemon) -> None:
    proc = qumran(net, "net-destroy", "lan")
    assert proc.returncode == 1 and "v1, v2" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1


def test_a_qumrand_restart_keeps_the_taps_and_the_traffic(net: NetDaemon) -> None:
    taps = {r["interface"] for name in VMS for r in qumran_json_rows(net, name)}
    before = {t: net.tap(t)["ifindex"] for t in taps}
    dnsmasq = net.call("GET", "/v1/networks/lan")["dnsmasq_pid"]
    net.daemon.restart(signal.SIGKILL)
    assert {t: net.tap(t)["ifindex"] for t in taps} == before
    assert net.call("GET", "/v1/networks/lan")["dnsmasq_pid"] == dnsmasq
    assert ping(net, "v1", guest_ip(net, "v2"))
    assert qumran(net, "domifaddr", "v2", "--ip").stdout.strip() == guest_ip(net, "v2")


def test_a_vm_killed_from_outside_leaves_no_tap(net: NetDaemon) -> None:
    taps = {name: qumran_json_rows(net, name)[0]["interface"] for name in VMS}
    for name in VMS:
        os.kill(net.call("GET", f"/v1/vms/{name}")["pid"], signal.SIGKILL)
    for name in VMS:
        net.daemon.wait_state(name, "shutoff", timeout=10)
    deadline = time.monotonic() + 5
    while set(taps.values()) & set(net.taps()):
        assert time.monotonic() < deadline, net.taps()
        time.sleep(0.05)


def test_on_an_isolated_network_a_vm_reaches_its_peer_and_nothing_beyond(
    net: NetDaemon,
) -> None:
    for name in VMS:
        define(net, name, "iso")
        boot(net, name)
    addresses = {name: dhcp(net, name) for name in VMS}
    assert all(ip.startswith("10.78.0.") for ip in addresses.values())
    # A route out and one back, so that only the network's rules stop what goes beyond.
    assert sh(net, "v1", "ip route replace default via 10.78.0.1")[0] == 0
    net.outside.ip("route", "replace", "10.78.0.0/24", "via", UPLINK)
    assert ping(net, "v1", addresses["v2"])
    assert ping(net, "v1", "10.78.0.1")
    assert not ping(net, "v1", OUTSIDE, "-c 1 -W 2")
