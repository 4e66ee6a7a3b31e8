"""A native VM's user NIC through qumrand: qumran-vmm on passt, with the definition's port
forward reaching the guest's port 22, the way `qumran ssh` reaches a guest. Runs in the KVM
test host, whose network has no default route (passt then runs on the loopback)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
from test_daemon_kvm import QUMRAN, qumran, qumran_json
from test_vmm_passt import _DHCP_SCRIPT

from daemon_harness import Daemon
from qumran.images.demo import READY_LINE, DemoImage

pytestmark = pytest.mark.kvm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _send_through_forward(port: int, data: bytes, timeout: float = 180) -> None:
    """Send ``data`` to the guest's listener through the forward, until it answers "pong":
    passt accepts every connection on the host side at once, and closes it when the guest
    refuses (its listener not started yet), so an answer is the only proof."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            try:
                conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
                if conn.recv(16).startswith(b"pong"):
                    return
            except OSError:
                pass
        time.sleep(0.5)
    pytest.fail(f"nothing answered on the forward from 127.0.0.1:{port}")


def test_a_native_vm_on_a_user_nic_gets_a_lease_and_its_ssh_forward(
    kvm_daemon: Daemon,
    demo: DemoImage,
    tmp_path: Path,
) -> None:
    # The test host starts with its loopback down (any other host has it up).
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    port = _free_port()
    doc = {
        "name": "k-user", "memory": "256M", "hypervisor": "native",
        "boot": {"kernel": str(demo.kernel), "initrd": str(demo.initrd), "cmdline": demo.cmdline},
        "nics": [{"type": "user", "forward": [f"tcp:127.0.0.1:{port}-:22"]}],
    }  # fmt: skip
    path = tmp_path / "k-user.json.yaml"
    path.write_text(json.dumps(doc))
    qumran_json(kvm_daemon, "define", str(path))
    proc = qumran(kvm_daemon, "start", "k-user", "--console", "--until", READY_LINE,
                  "--timeout", "150")  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    commands = (
        f"{_DHCP_SCRIPT}; ip link set eth0 up; udhcpc -i eth0 -n -q -f -s /tmp/dhcp;"
        " echo pong | nc -l -p 22 > /tmp/got; echo GOT=$(cat /tmp/got)=\n"
    )
    console = subprocess.Popen(
        [QUMRAN, "console", "k-user", "--until", "GOT=through-passt=", "--timeout", "240"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=kvm_daemon.env,
    )  # fmt: skip
    assert console.stdin is not None
    console.stdin.write(commands)
    console.stdin.flush()
    _send_through_forward(port, b"through-passt")
    out, err = console.communicate(timeout=300)
    assert console.returncode == 0, err + out[-2000:]
    assert "LEASE 10.0.2.15/24 via 10.0.2.2" in out, out[-2000:]
    assert "GOT=through-passt=" in out, out[-2000:]
    qumran_json(kvm_daemon, "destroy", "k-user")
    kvm_daemon.wait_state("k-user", "shutoff", timeout=90)
    # passt went with the VM: its forward is free again.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.2)
    pytest.fail("passt outlived its VM: the forward still answers")
