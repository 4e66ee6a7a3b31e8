"""Both hypervisors on one of qumrand's networks, under a real KVM (the KVM test host).

A qumran-vmm VM and a QEMU VM (``-accel kvm``) each get a TAP on the same NAT network,
handed over as an open fd (qumran-vmm's ``--net fd=``, QEMU's ``-netdev tap,fd=``),
leases from the network's dnsmasq, and reach each other. qumrand runs in a network
namespace of the test's own (tests/netvm.py), inside the test host: nothing is made in
the test host's own namespace, and no packet leaves this machine.

One test, one boot of each guest: nested emulation makes every boot slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netns import available
from netvm import LAN, boot, define_demo, dhcp, net_daemon, ping, qumran, sh
from qumran.images.demo import DemoImage

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]

# The first qumrand in a fresh test host imports FastAPI from a cold page cache under
# nested emulation (tests/kvm/test_daemon_kvm.py).
START_TIMEOUT = 120
BOOT_TIMEOUT = 150


def argv_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_a_qumran_vmm_vm_and_a_qemu_vm_on_one_network_exchange_traffic(
    demo: DemoImage,
) -> None:
    with net_daemon("real", start_timeout=START_TIMEOUT) as net:
        net.network(LAN)
        vms = {"kn": "native", "kq": "qemu"}
        for name, hypervisor in vms.items():
            define_demo(net, demo, name, "lan", hypervisor=hypervisor, memory=256)
            boot(net, name, timeout=BOOT_TIMEOUT)
        # Each hypervisor got its TAP as an fd, and QEMU runs on KVM, not TCG.
        native = argv_of(net.call("GET", "/v1/vms/kn")["pid"])
        assert native[native.index("--net") + 1].startswith("fd="), native
        qemu = argv_of(net.call("GET", "/v1/vms/kq")["pid"])
        assert qemu[qemu.index("-accel") + 1] == "kvm", qemu
        assert qemu[qemu.index("-netdev") + 1].startswith("tap,"), qemu
        addresses = {name: dhcp(net, name) for name in vms}
        for name, ip in addresses.items():
            assert ip.startswith("192.168.151."), addresses
            assert qumran(net, "domifaddr", name, "--ip").stdout.strip() == ip
        assert ping(net, "kq", addresses["kn"], "-c 1 -W 3")
        # The other way, more than a ping: full-size frames, each answered.
        status, out = sh(net, "kn", f"ping -A -q -c 20 -s 1400 -W 3 {addresses['kq']}")
        assert status == 0 and "20 packets received" in out, out
