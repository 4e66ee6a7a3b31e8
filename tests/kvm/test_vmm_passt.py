"""qumran-vmm's ``--net passt`` under a real KVM: a DHCP lease from passt, a host port
forwarded to a listener in the guest, and the guest reaching the host's loopback through
the gateway address. Nothing leaves the machine: every peer is on 127.0.0.1 of a network
namespace of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from test_virtio_guest import _load_tun
from vmm_harness import Vmm

from qumran.images.demo import DemoImage

pytestmark = pytest.mark.kvm
MakeVmm = Callable[..., Vmm]
BOOT_TIMEOUT = 120.0
BLOB = 16 << 20
FORWARD_PORT, GUEST_PORT, HOST_PORT = 2222, 5555, 5001

# Prints the byte count, SHA-256 and seconds of what passed (recv: from the first byte).
_PEER = """
import hashlib, random, socket, sys, time
mode, h = sys.argv[1], hashlib.sha256()
if mode == "recv":
    srv = socket.create_server(("127.0.0.1", int(sys.argv[2])))
    print("listening", flush=True)
    conn, _ = srv.accept()
    n, start = 0, None
    while data := conn.recv(1 << 20):
        start = start or time.monotonic()
        n += len(data)
        h.update(data)
else:  # the guest listens already: one connection
    conn = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=120)
    total, rng, n = int(sys.argv[3]), random.Random(7), 0
    data = rng.randbytes(total)
    start = time.monotonic()
    conn.sendall(data)
    h.update(data)
    n = len(data)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
conn.close()
print(n, h.hexdigest(), round(time.monotonic() - (start or time.monotonic()), 3), flush=True)
"""


@pytest.fixture
def lone_netns() -> Iterator[str]:
    """A network namespace with lo up and a default route over a TAP that nobody reads:
    passt takes its host-side addresses from the interface with the default route, and
    the test host has none; nothing is sent there (every peer is on 127.0.0.1)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("passt") is None:
        pytest.skip("passt not installed (scripts/setup.sh installs it)")
    _load_tun()
    name = f"qpasst{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    ip = ["ip", "-n", name]
    for cmd in ("link set lo up", "tuntap add qpt0 mode tap", "addr add 192.0.2.2/24 dev qpt0",
                "link set qpt0 up", "route add default via 192.0.2.1 dev qpt0 onlink"):  # fmt: skip
        subprocess.run([*ip, *cmd.split()], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def _peer(netns: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", _PEER, *args],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip


# udhcpc calls its script with the lease in the environment; this one sets the address and
# says what it got.
_DHCP_SCRIPT = (
    'printf \'#!/bin/sh\\n[ "$1" = bound ] || exit 0\\n'
    "ip addr add $ip/$mask dev $interface\\nip route add default via $router\\n"
    "echo LEASE $ip/$mask via $router mtu $(cat /sys/class/net/$interface/mtu)\\n'"
    " > /tmp/dhcp && chmod +x /tmp/dhcp"
)


def test_passt_gives_a_lease_and_moves_tcp_through_a_forward_and_the_gateway(
    vmm_factory: MakeVmm, demo: DemoImage, lone_netns: str
) -> None:
    forward = f"tcp:127.0.0.1:{FORWARD_PORT}-:{GUEST_PORT}"
    net = f"passt,mac=52:54:00:12:34:56,forward={forward}"
    vmm = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=demo.cmdline, extra=["--net", net])
    vmm.argv = ["ip", "netns", "exec", lone_netns, *vmm.argv]
    vmm.start()
    vmm.console.wait_for(demo.ready_line, BOOT_TIMEOUT)
    vmm.command(_DHCP_SCRIPT)
    out = vmm.command("ip link set eth0 up && udhcpc -i eth0 -n -q -f -s /tmp/dhcp", timeout=120)
    assert "LEASE 10.0.2.15/24 via 10.0.2.2 mtu 65520" in out, out
    status = next(d for d in vmm.control("status")["devices"] if d["type"] == "net")
    assert status["backend"] == "passt" and status["forwards"] == [forward], status

    # Host -> guest through the forward on the host's 127.0.0.1. passt accepts on the host
    # at once, whether or not the guest listens, so the host cannot tell; the guest's own
    # socket table can: the transfer starts once its nc is in LISTEN (state 0A). Nothing
    # is typed while nc runs in the background: it would read the console. (An
    # answer from the guest's nc would not do: Debian 12's passt did not pass on what the
    # guest sent first on a forwarded connection, in 20 s, while the host sent nothing;
    # the same under QEMU.)
    since = vmm.console.mark()
    vmm.type(f"(nc -l -p {GUEST_PORT} > /tmp/in; echo received-$?) &\n")
    listening = f":{GUEST_PORT:04X} 0+:0000 0A"  # busybox nc listens on [::] (tcp6)
    vmm.command(f"until cat /proc/net/tcp* | grep -qE '{listening}'; do sleep 0.1; done",
                timeout=60)  # fmt: skip
    peer = _peer(lone_netns, "send", str(FORWARD_PORT), str(BLOB))
    out, _ = peer.communicate(timeout=600)
    vmm.console.wait_for("received-0", 120, since)
    count, digest, seconds = out.split()
    assert count == str(BLOB)
    assert vmm.command("sha256sum < /tmp/in", timeout=60).split()[0] == digest
    inbound = BLOB / float(seconds) / 1e6

    # Guest -> host: the gateway address is the host's loopback.
    vmm.command(f"head -c {BLOB} /dev/urandom > /tmp/out", timeout=120)
    sent = vmm.command("sha256sum < /tmp/out", timeout=60).split()[0]
    peer = _peer(lone_netns, "recv", str(HOST_PORT))
    assert peer.stdout is not None and peer.stdout.readline().strip() == "listening"
    start = time.monotonic()
    vmm.command(f"nc 10.0.2.2 {HOST_PORT} < /tmp/out", timeout=600)
    out, _ = peer.communicate(timeout=60)
    outbound = BLOB / (time.monotonic() - start) / 1e6
    status = next(d for d in vmm.control("status")["devices"] if d["type"] == "net")
    assert out.split()[:2] == [str(BLOB), sent], f"{status}\n{vmm.stderr}"
    print(f"\npasst: host->guest {inbound:.1f} MB/s, guest->host {outbound:.1f} MB/s")
    vmm.control("quit")
    assert vmm.wait(30) == 0
    # passt went with the VMM: its forward is free again.
    pattern = f"passt.*{FORWARD_PORT}:{GUEST_PORT}"
    for _ in range(100):  # passt sees its socket close and exits on its own
        if subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode != 0:
            break
        time.sleep(0.1)
    else:
        pytest.fail("passt outlived its VM")
