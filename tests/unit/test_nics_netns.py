"""VMs' NICs on qumrand's networks, with the fake driver: MACs, TAPs, refusals, restarts.

qumrand runs in a network namespace of the test's own (tests/netvm.py); the fake VM
process inherits its TAPs as a real hypervisor does, so the TAPs live exactly as long as
it does. Guests that move packets are in tests/integration/test_nics_qemu.py.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_harness import system_user
from netns import available
from netvm import ISO, LAN, NetDaemon, net_daemon, uid_of_link, vm_doc

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

MAC = re.compile(r"52:54:00(:[0-9a-f]{2}){3}")


@pytest.fixture
def net() -> Iterator[NetDaemon]:
    with net_daemon("fake") as nd:
        nd.network(LAN)
        yield nd


def tap_of(vm: dict[str, object], index: int = 0) -> str:
    return f"qt{str(vm['uuid']).replace('-', '')[:8]}n{index}"


def wait_gone(net: NetDaemon, tap: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while tap in net.taps():
        assert time.monotonic() < deadline, f"TAP {tap} still there"
        time.sleep(0.05)


def test_a_network_nic_gets_a_stable_mac_and_a_tap_on_the_bridge(net: NetDaemon) -> None:
    vm = net.call("POST", "/v1/vms", json=vm_doc("a", nics=[{"network": "lan"}]))
    nic = vm["definition"]["nics"][0]
    assert nic["network"] == "lan" and nic["type"] == "network" and "forward" not in nic
    assert MAC.fullmatch(nic["mac"]), nic
    # dumpdef shows it; a redefinition without a MAC keeps it.
    again = net.call("PUT", "/v1/vms/a/definition", json=vm_doc("a", nics=[{"network": "lan"}]))
    assert again["definition"]["nics"][0]["mac"] == nic["mac"]
    assert net.taps() == {}
    net.call("POST", "/v1/vms/a/start")
    tap = tap_of(vm)
    link = net.tap(tap)
    assert link["master"] == "qbr-lan" and "UP" in link["flags"]
    assert link["qdisc"] == "noqueue", link  # no host queue before the VM's own
    assert link["linkinfo"]["info_kind"] == "tun"
    data = link["linkinfo"]["info_data"]
    # Not persistent (it dies with the process), with virtio-net headers, the VM owner's.
    assert (data["type"], data["persist"], data["vnet_hdr"]) == ("tap", False, True), data
    assert uid_of_link(link) == os.geteuid()
    rows = net.call("GET", "/v1/vms/a/interfaces")
    assert [(r["interface"], r["type"], r["network"], r["model"], r["mac"]) for r in rows] == [
        (tap, "network", "lan", "virtio", nic["mac"])
    ]
    assert rows[0]["counters"] is not None
    # Stopped: the TAP went with the process.
    net.call("POST", "/v1/vms/a/destroy")
    wait_gone(net, tap)
    assert net.call("GET", "/v1/vms/a/interfaces")[0]["interface"] is None


def test_macs_are_unique_and_a_duplicate_is_refused_naming_the_other_vm(net: NetDaemon) -> None:
    macs = set()
    for i in range(4):
        vm = net.call("POST", "/v1/vms", json=vm_doc(f"m{i}", nics=[{"network": "lan"}] * 2))
        macs |= {n["mac"] for n in vm["definition"]["nics"]}
    assert len(macs) == 8
    taken = sorted(macs)[0]
    message = net.refused("POST", "/v1/vms", 400,
                          json=vm_doc("dup", nics=[{"network": "lan", "mac": taken}]))  # fmt: skip
    assert message.startswith("nics[0].mac: ") and re.search(r"VM 'm\d'", message), message
    message = net.refused("POST", "/v1/vms", 400, json=vm_doc(
        "dup", nics=[{"network": "lan", "mac": "52:54:00:00:00:01"},
                     {"network": "lan", "mac": "52:54:00:00:00:01"}]))  # fmt: skip
    assert "nics[1].mac" in message and "nics[0]" in message
    # Another user is not told whose it is.
    other = system_user("qumran-nictest")
    response = _as_user(net, other.pw_uid, other.pw_gid,
                        vm_doc("theirs", nics=[{"network": "lan", "mac": taken}]))  # fmt: skip
    assert response[0] == 400 and "another VM" in response[1] and "'m" not in response[1]
    assert {v["name"] for v in net.call("GET", "/v1/vms?all=true")} == {f"m{i}" for i in range(4)}


def test_another_user_attaches_to_shared_networks_only_and_owns_the_tap(net: NetDaemon) -> None:
    net.network(ISO)  # active, not shared
    other = system_user("qumran-nictest")
    status, message = _as_user(net, other.pw_uid, other.pw_gid,
                               vm_doc("theirs", nics=[{"network": "iso"}]))  # fmt: skip
    assert (status, message) == (400, "nics[0].network: no network named 'iso' (see `qumran "
                                      "net-list`)")  # fmt: skip
    status, _ = _as_user(net, other.pw_uid, other.pw_gid,
                         vm_doc("theirs", nics=[{"network": "lan"}]))  # fmt: skip
    assert status == 201
    vm = net.call("POST", "/v1/vms/theirs/start")  # root starts it: it runs as its owner
    assert uid_of_link(net.tap(tap_of(vm))) == other.pw_uid
    net.call("POST", "/v1/vms/theirs/destroy")


def _as_user(net: NetDaemon, uid: int, gid: int, doc: dict[str, object]) -> tuple[int, str]:
    """POST /v1/vms as another user (a child process that drops to uid:gid first)."""
    import json
    import subprocess
    import sys

    code = (
        "import httpx,json,os,sys; os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[1]));"
        "c=httpx.Client(transport=httpx.HTTPTransport(uds=sys.argv[3]),base_url='http://q');"
        "r=c.post('/v1/vms',json=json.loads(sys.argv[4]));"
        "print(r.status_code); print(r.json()['error']['message'] if r.status_code>=300 else '')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(uid), str(gid), net.daemon.socket, json.dumps(doc)],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    status, _, message = done.stdout.partition("\n")
    return int(status), message.strip()


def test_bad_nics_are_refused_and_leave_nothing(net: NetDaemon) -> None:
    net.network(ISO, start=False)  # defined, not started, not shared
    links = set(net.ns.links())
    for doc, where in (
        (vm_doc("b", nics=[{"network": "nosuch"}]), "nics[0].network: no network named 'nosuch'"),
        (vm_doc("b", nics=[{"network": "lan", "mac": "zz"}]), "nics[0].mac"),
        (vm_doc("b", nics=[{"network": "lan", "mac": "53:54:00:00:00:01"}]), "multicast"),
        (vm_doc("b", nics=[{"network": "lan", "forward": ["tcp::2222-:22"]}]), "forward"),
    ):
        assert where in net.refused("POST", "/v1/vms", 400, json=doc)
    # A second NIC on a network that is not active: refused at start, the first NIC's TAP
    # (already made) is gone again, the VM is shut off.
    vm = net.call("POST", "/v1/vms", json=vm_doc("b", nics=[{"network": "lan"},
                                                            {"network": "iso"}]))  # fmt: skip
    message = net.refused("POST", "/v1/vms/b/start", 409)
    assert message.startswith("nics[1].network: network 'iso' is not active"), message
    assert set(net.ns.links()) == links and net.call("GET", "/v1/vms/b")["state"] == "shutoff"
    # A user network gives no TAP.
    net.network({"name": "u", "type": "user"}, start=False)
    assert "user network" in net.refused(
        "POST", "/v1/vms", 400, json=vm_doc("c", nics=[{"network": "u"}])
    )
    assert tap_of(vm, 0) not in net.taps()


def test_a_vm_killed_from_outside_leaves_no_tap(net: NetDaemon) -> None:
    vm = net.call("POST", "/v1/vms", json=vm_doc("k", nics=[{"network": "lan"}]))
    pid = net.call("POST", "/v1/vms/k/start")["pid"]
    assert tap_of(vm) in net.taps()
    os.kill(pid, signal.SIGKILL)
    net.daemon.wait_state("k", "shutoff")
    wait_gone(net, tap_of(vm))


def test_restart_keeps_the_taps_and_net_destroy_names_the_vms(net: NetDaemon) -> None:
    a = net.call("POST", "/v1/vms", json=vm_doc("a", nics=[{"network": "lan"}]))
    b = net.call("POST", "/v1/vms", json=vm_doc("b", nics=[{"network": "lan"}]))
    for name in ("a", "b"):
        net.call("POST", f"/v1/vms/{name}/start")
    before = {tap: link["ifindex"] for tap, link in net.taps().items()}
    assert set(before) == {tap_of(a), tap_of(b)}
    net.daemon.restart(signal.SIGKILL)
    assert {tap: link["ifindex"] for tap, link in net.taps().items()} == before
    assert net.call("GET", "/v1/vms/a/interfaces")[0]["interface"] == tap_of(a)
    message = net.refused("POST", "/v1/networks/lan/destroy", 409)
    assert "a, b" in message and "--force" in message
    # Once a is stopped, only b is named; the TAPs are a's and b's own to lose.
    net.call("POST", "/v1/vms/a/destroy")
    assert "(b)" in net.refused("POST", "/v1/networks/lan/destroy", 409)
    wait_gone(net, tap_of(a))
    assert tap_of(b) in net.taps()


def test_net_undefine_is_refused_while_defined_vms_use_it_unless_forced(net: NetDaemon) -> None:
    import subprocess
    import sys

    net.network(ISO, start=False)
    net.call("POST", "/v1/vms", json=vm_doc("u1", nics=[{"network": "iso"}]))
    net.call("POST", "/v1/vms", json=vm_doc("u2", nics=[{"network": "lan"}, {"network": "iso"}]))
    net.call("POST", "/v1/vms", json=vm_doc("other", nics=[{"network": "lan"}]))
    # A running VM whose definition saved for its next start moves it onto iso counts too.
    net.call("POST", "/v1/vms/other/start")
    net.call("PUT", "/v1/vms/other/definition", json=vm_doc("other", nics=[{"network": "iso"}]))
    message = net.refused("DELETE", "/v1/networks/iso", 409)
    assert "(other, u1, u2)" in message and "net-undefine --force iso" in message, message
    # The CLI: one line, and the network is still there.
    qumran = str(Path(sys.executable).parent / "qumran")
    proc = subprocess.run([qumran, "net-undefine", "iso"], capture_output=True, text=True,
                          env=net.daemon.env, timeout=60)  # fmt: skip
    assert proc.returncode == 1 and "other, u1, u2" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert net.call("GET", "/v1/networks/iso")["name"] == "iso"
    # Once no definition names it but u1's, only u1 is named.
    net.call("POST", "/v1/vms/other/destroy")
    net.call("PUT", "/v1/vms/other/definition", json=vm_doc("other", nics=[{"network": "lan"}]))
    net.call("PUT", "/v1/vms/u2/definition", json=vm_doc("u2", nics=[{"network": "lan"}]))
    assert "(u1)" in net.refused("DELETE", "/v1/networks/iso", 409)
    # Forced: gone; u1 then names a network that does not exist, and says so at start.
    proc = subprocess.run([qumran, "net-undefine", "--force", "iso"], capture_output=True,
                          text=True, env=net.daemon.env, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert net.daemon.call("GET", "/v1/networks/iso").status_code == 404
    message = net.refused("POST", "/v1/vms/u1/start", 404)
    assert message.startswith("nics[0].network: no network named 'iso'"), message
    # A network no definition names goes without --force.
    net.network({"name": "spare", "type": "isolated",
                 "ipv4": {"address": "10.79.0.1/24"}}, start=False)  # fmt: skip
    net.call("DELETE", "/v1/networks/spare")
