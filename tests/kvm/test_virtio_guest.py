"""virtio over PCI in qumran-vmm, under a real KVM: block, entropy, network, console."""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from vmm_harness import ConsoleBuffer, Vmm, _pump

from qumran.images.demo import DemoImage

pytestmark = pytest.mark.kvm
MakeVmm = Callable[..., Vmm]
BOOT_TIMEOUT = 120.0


def _boot(vmm_factory: MakeVmm, demo: DemoImage, *extra: str) -> Vmm:
    vmm = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=demo.cmdline, extra=extra)
    vmm.start()
    vmm.console.wait_for(demo.ready_line, BOOT_TIMEOUT)
    return vmm


def _ext4(path: Path, size_mib: int = 64) -> Path:
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True)
    return path


def test_guest_writes_a_file_on_ext4_and_it_is_in_the_image(
    vmm_factory: MakeVmm, demo: DemoImage, workdir: Path
) -> None:
    image = _ext4(workdir / "disk.img")
    vmm = _boot(vmm_factory, demo, "--disk", str(image))
    assert vmm.command("cat /sys/block/vda/size").strip() == str(64 << 11)
    assert vmm.command("cat /sys/block/vda/ro").strip() == "0"
    irqs = vmm.command("grep virtio /proc/interrupts")
    assert "PCI-MSI" in irqs, irqs
    vmm.command("mkdir -p /mnt && mount -t ext4 /dev/vda /mnt", timeout=60)
    vmm.command("echo written-by-the-guest-$((6 * 7)) > /mnt/f && sync && umount /mnt", timeout=60)
    status = vmm.control("status")
    assert status["devices"][0]["type"] == "disk" and status["devices"][0]["flushes"] > 0
    vmm.type("poweroff\n")
    assert vmm.wait(60) == 0
    out = subprocess.run(["debugfs", "-R", "cat /f", str(image)], capture_output=True, text=True)
    assert out.stdout.strip() == "written-by-the-guest-42", out


def test_read_only_disk_and_the_disk_id(
    vmm_factory: MakeVmm, demo: DemoImage, workdir: Path
) -> None:
    image = workdir / "data.img"
    image.write_bytes(b"qumran-sector-zero".ljust(512, b"\0") * 2048)
    image.chmod(0o444)
    vmm = _boot(vmm_factory, demo, "--disk", f"{image},ro", "--rng")
    assert vmm.command("cat /sys/block/vda/ro").strip() == "1"
    assert vmm.command("head -c 18 /dev/vda").strip() == "qumran-sector-zero"
    assert vmm.command("cat /sys/block/vda/serial").strip() == "data.img"
    # A write to a read-only disk fails in the guest; the image stays as it was.
    vmm.command("echo x | dd of=/dev/vda bs=512 count=1 oflag=direct 2>&1; true")
    assert image.read_bytes()[:18] == b"qumran-sector-zero"
    # A guest reboot builds the devices again on the same backends.
    since = vmm.console.mark()
    vmm.type("reboot\n")
    vmm.console.wait_for(demo.ready_line, BOOT_TIMEOUT, since)
    assert vmm.command("head -c 18 /dev/vda").strip() == "qumran-sector-zero"
    assert vmm.control("status")["reboots"] == 1
    vmm.control("quit")
    assert vmm.wait(30) == 0


def test_hwrng_gives_bytes(vmm_factory: MakeVmm, demo: DemoImage) -> None:
    vmm = _boot(vmm_factory, demo, "--rng")
    assert "virtio_rng" in vmm.command("cat /sys/class/misc/hw_random/rng_current")
    out = vmm.command("head -c 64 /dev/hwrng | od -An -v -tx1 | tr -d ' \\n'", timeout=60)
    assert len(out.strip()) == 128 and len(set(out.strip())) > 4, out
    vmm.control("quit")
    assert vmm.wait(30) == 0


@pytest.fixture
def unwritable(workdir: Path) -> Iterator[Path]:
    """An image nobody may write, root included: on a file system mounted read-only."""
    mnt = workdir / "rofs"
    mnt.mkdir()
    if os.geteuid() != 0:
        image = mnt / "ro.img"
        image.write_bytes(bytes(4096))
        image.chmod(0o444)
        yield image
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "ro.img").write_bytes(bytes(4096))
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt / "ro.img"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_bad_disk_arguments_fail_before_the_guest_starts(
    vmm_factory: MakeVmm, demo: DemoImage, workdir: Path, unwritable: Path
) -> None:
    readonly = unwritable
    cases = {
        "does not exist": ["--disk", str(workdir / "missing.img")],
        "is not writable (add ,ro": ["--disk", str(readonly)],
        "bad MAC address": ["--net", "tap=qt0,mac=52:54:00:zz:00:01"],
        "vhost must be on or off, not 'maybe'": ["--net", "tap=qt0,vhost=maybe"],
        "unknown option": ["--disk", f"{readonly},rw"],
    }
    for message, extra in cases.items():
        vmm = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=demo.cmdline, extra=extra)
        vmm.start()
        assert vmm.wait(60) == 1
        assert message in vmm.stderr, vmm.stderr


def _load_tun() -> None:
    """The test host's kernel has tun as a module it does not load by itself; the host has
    no kmod, so load it with finit_module(2) (x86-64 syscall 313)."""
    if os.path.exists("/dev/net/tun"):
        return
    release = os.uname().release
    libc = ctypes.CDLL(None, use_errno=True)
    for home in {Path.home(), Path(pwd.getpwuid(os.getuid()).pw_dir)}:
        for ko in (home / ".cache/qumran/debs").glob(
            f"linux-image-*/lib/modules/{release}/**/tun.ko"
        ):
            fd = os.open(ko, os.O_RDONLY)
            libc.syscall(313, fd, b"", 0)
            os.close(fd)
            break
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun and no tun.ko for this kernel")


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    _load_tun()
    name = f"qvmm{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def _link_up(vmm: Vmm, demo: DemoImage, netns: str, tap: str) -> None:
    """Once the guest is up: 10.0.2.2 on the TAP in ``netns``, 10.0.2.15 on the guest's eth0."""
    vmm.console.wait_for(demo.ready_line, BOOT_TIMEOUT)
    ip = ["ip", "-n", netns]
    subprocess.run([*ip, "addr", "add", "10.0.2.2/24", "dev", tap], check=True)
    subprocess.run([*ip, "link", "set", tap, "up"], check=True)
    vmm.command("ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up")


def _net_status(vmm: Vmm) -> dict[str, Any]:
    status: dict[str, Any] = next(d for d in vmm.control("status")["devices"] if d["type"] == "net")
    return status


def test_guest_pings_the_host_side_of_the_tap(
    vmm_factory: MakeVmm, demo: DemoImage, netns: str
) -> None:
    mac = "52:54:00:12:34:56"
    vmm = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=demo.cmdline,
                      extra=["--net", f"tap=qtap0,mac={mac}"])  # fmt: skip
    vmm.argv = ["ip", "netns", "exec", netns, *vmm.argv]
    vmm.start()
    _link_up(vmm, demo, netns, "qtap0")
    assert vmm.command("cat /sys/class/net/eth0/address").strip() == mac
    out = vmm.command("ping -c 3 -W 5 10.0.2.2", timeout=60)
    assert "3 packets received" in out, out
    net = _net_status(vmm)
    assert net["tap"] == "qtap0" and net["rx_packets"] >= 3 and net["tx_packets"] >= 3
    vmm.control("quit")
    assert vmm.wait(30) == 0


# Opens a TAP (as a parent such as qumrand or libvirt would) and execs the VMM with it as
# fd=N: the adopted TAP must get the same offloads as one the VMM creates.
_WITH_TAP_FD = """
import os, sys
from qumran.vmm.devices.virtio.tap import Tap
tap = Tap.open("qtap1", None)
os.set_inheritable(tap.fd, True)
argv = [arg.replace("fd=TAPFD", f"fd={tap.fd}") for arg in sys.argv[1:]]
os.execv(argv[0], argv)
"""


@pytest.mark.parametrize("vhost", ["off", "on"])
def test_a_tap_passed_as_fd_is_adopted_with_offloads(
    vmm_factory: MakeVmm, demo: DemoImage, netns: str, vhost: str
) -> None:
    if vhost == "on":
        _need_vhost()
    vmm = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=demo.cmdline,
                      extra=["--net", f"fd=TAPFD,vhost={vhost}"])  # fmt: skip
    vmm.argv = ["ip", "netns", "exec", netns, sys.executable, "-c", _WITH_TAP_FD, *vmm.argv]
    vmm.start()
    _link_up(vmm, demo, netns, "qtap1")
    out = vmm.command("ping -c 2 -W 5 10.0.2.2", timeout=60)
    assert "2 packets received" in out, out
    net = _net_status(vmm)
    assert net["tap"] == "qtap1" and net["vhost"] is (vhost == "on"), net
    assert {"csum", "tso4", "tso6"} <= set(net["rx_offloads"]), net
    vmm.control("quit")
    assert vmm.wait(30) == 0


def test_a_tap_that_cannot_be_created_is_a_clear_error(
    vmm_factory: MakeVmm, demo: DemoImage, netns: str
) -> None:
    vmm = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=demo.cmdline,
                      extra=["--net", "tap=lo"])  # fmt: skip
    vmm.argv = ["ip", "netns", "exec", netns, *vmm.argv]
    vmm.start()
    assert vmm.wait(60) == 1
    assert "cannot create TAP lo" in vmm.stderr, vmm.stderr


def test_a_shell_on_hvc0_answers(vmm_factory: MakeVmm, demo: DemoImage, workdir: Path) -> None:
    hvc_path = workdir / "hvc.sock"
    vmm = _boot(vmm_factory, demo, "--virtio-console", f"socket:{hvc_path}")
    vmm.command("ls /dev/hvc0")
    vmm.type("setsid sh -c 'exec sh -i </dev/hvc0 >/dev/hvc0 2>&1' &\n")
    hvc = ConsoleBuffer()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(hvc_path))
    threading.Thread(target=_pump, args=(sock, hvc), daemon=True).start()
    deadline = time.monotonic() + 30
    while "hvc-answers-42" not in hvc.text and time.monotonic() < deadline:
        sock.sendall(b"echo hvc-answers-$((6 * 7)); tty\n")
        time.sleep(1)
    hvc.wait_for("hvc-answers-42", 5)
    hvc.wait_for("/dev/hvc0", 5)
    vmm.control("quit")
    assert vmm.wait(30) == 0
    sock.close()


def test_flushed_data_survives_a_kill_right_after(
    vmm_factory: MakeVmm, demo: DemoImage, workdir: Path
) -> None:
    image = workdir / "raw.img"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    vmm = _boot(vmm_factory, demo, "--disk", str(image))
    vmm.command(
        "printf 'flushed-%s' $((20 + 22)) | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null"
    )
    vmm.signal(signal.SIGKILL)
    vmm.wait(30)
    vmm.control_path.unlink()  # a killed VMM cannot clean up after itself
    assert image.read_bytes()[:10] == b"flushed-42"


def test_intx_fallback_without_msi(vmm_factory: MakeVmm, demo: DemoImage, workdir: Path) -> None:
    image = workdir / "intx.img"
    image.write_bytes(b"intx-works".ljust(512, b"\0") * 256)
    vmm = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=f"{demo.cmdline} pci=nomsi",
                      extra=["--disk", str(image), "--rng"])  # fmt: skip
    vmm.start()
    vmm.console.wait_for(demo.ready_line, BOOT_TIMEOUT)
    irqs = vmm.command("grep virtio /proc/interrupts")
    assert "PCI-MSI" not in irqs and "IO-APIC" in irqs, irqs
    assert vmm.command("head -c 10 /dev/vda").strip() == "intx-works"
    assert len(vmm.command("head -c 32 /dev/hwrng | od -An -v -tx1 | tr -d ' \\n'").strip()) == 64
    vmm.control("quit")
    assert vmm.wait(30) == 0


def test_parallel_streams_keep_every_byte_in_place(
    vmm_factory: MakeVmm, demo: DemoImage, workdir: Path
) -> None:
    """Several streams at once, so batches of requests (large ones split over helper
    threads, notifications suppressed by event indices): what the guest reads is what the
    image holds, and what it writes ends up in the image."""
    import hashlib
    import random

    data = random.Random(11).randbytes(16 << 20)
    image = workdir / "streams.img"
    image.write_bytes(data + bytes(16 << 20))
    vmm = _boot(vmm_factory, demo, "--disk", str(image))
    reads = vmm.command(
        "for i in 0 1 2 3; do dd if=/dev/vda bs=64k skip=$((i * 64)) count=64 2>/dev/null"
        " | md5sum > /tmp/r$i & done; wait; cat /tmp/r0 /tmp/r1 /tmp/r2 /tmp/r3",
        timeout=120,
    ).split()[::2]
    assert reads == [hashlib.md5(data[i << 22 : (i + 1) << 22]).hexdigest() for i in range(4)]
    written = vmm.command(
        "dd if=/dev/urandom of=/tmp/w bs=1M count=8 2>/dev/null;"
        " for i in 0 1; do dd if=/tmp/w of=/dev/vda bs=64k skip=$((i * 64))"
        " seek=$((256 + i * 64)) count=64 conv=fsync 2>/dev/null & done; wait; md5sum /tmp/w",
        timeout=120,
    ).split()[0]
    vmm.control("quit")
    assert vmm.wait(30) == 0
    assert hashlib.md5(image.read_bytes()[16 << 20 : 24 << 20]).hexdigest() == written


# Runs on the host side of the TAP, in the network namespace: "recv PORT" takes one
# connection and reads it to the end; "send ADDR PORT N SEED" sends N pseudo-random bytes.
# Either way it prints the byte count and SHA-256 of what passed.
_PEER = """
import hashlib, random, socket, sys, time
mode, h = sys.argv[1], hashlib.sha256()
if mode == "recv":
    srv = socket.create_server(("10.0.2.2", int(sys.argv[2])))
    print("listening", flush=True)
    conn, _ = srv.accept()
    n = 0
    while data := conn.recv(1 << 20):
        n += len(data)
        h.update(data)
else:
    for _ in range(60):  # until the guest's nc listens
        try:
            conn = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=60)
            break
        except ConnectionRefusedError:
            time.sleep(1)
    total, rng, n = int(sys.argv[4]), random.Random(int(sys.argv[5])), 0
    while n < total:
        data = rng.randbytes(min(1 << 20, total - n))
        conn.sendall(data)
        h.update(data)
        n += len(data)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
conn.close()
print(n, h.hexdigest(), flush=True)
"""
BLOB = 8 << 20


def _peer(netns: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _PEER, *args],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_tcp_in_both_directions_arrives_intact_with_offloads(
    vmm_factory: MakeVmm, demo: DemoImage, netns: str
) -> None:
    """8 MiB each way between the guest and the host side of the TAP, compared by SHA-256.
    Frames above an MTU on average show that TSO was used both ways; a wrong checksum or
    segmentation header would make TCP drop or corrupt segments and this test fail."""
    vmm = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=demo.cmdline,
                      extra=["--net", "tap=qtap0"])  # fmt: skip
    vmm.argv = ["ip", "netns", "exec", netns, *vmm.argv]
    vmm.start()
    _link_up(vmm, demo, netns, "qtap0")
    net = _net_status(vmm)
    assert {"csum", "tso4", "tso6"} <= set(net["rx_offloads"]), net

    _guest_to_host(vmm, netns)
    before = _net_status(vmm)
    assert before["tx_bytes"] / before["tx_packets"] > 1514, before
    _host_to_guest(vmm, netns)
    after = _net_status(vmm)
    rx_packets = after["rx_packets"] - before["rx_packets"]
    assert (after["rx_bytes"] - before["rx_bytes"]) / rx_packets > 1514, after
    vmm.control("quit")
    assert vmm.wait(30) == 0


def _guest_to_host(vmm: Vmm, netns: str, port: int = 5001) -> None:
    """BLOB random bytes from the guest to the host side, byte-exact (SHA-256)."""
    vmm.command(f"head -c {BLOB} /dev/urandom > /tmp/out", timeout=120)
    sent = vmm.command("sha256sum < /tmp/out", timeout=60).split()[0]
    peer = _peer(netns, "recv", str(port))
    assert peer.stdout is not None and peer.stdout.readline().strip() == "listening"
    vmm.command(f"nc 10.0.2.2 {port} < /tmp/out", timeout=300)
    out, _ = peer.communicate(timeout=60)
    assert out.split() == [str(BLOB), sent]


def _host_to_guest(vmm: Vmm, netns: str, port: int = 5002) -> None:
    """BLOB pseudo-random bytes from the host side to the guest, byte-exact (SHA-256)."""
    since = vmm.console.mark()
    vmm.type(f"nc -l -p {port} > /tmp/in; echo received-$?\n")
    peer = _peer(netns, "send", "10.0.2.15", str(port), str(BLOB), "42")
    out, _ = peer.communicate(timeout=300)
    vmm.console.wait_for("received-0", 60, since)
    count, digest = out.split()
    assert count == str(BLOB)
    assert vmm.command("sha256sum < /tmp/in", timeout=60).split()[0] == digest


# --- vhost-net: the host kernel serves the rings ----------------------------------------------


def _need_vhost() -> None:
    # Not a skip: the KVM test host loads vhost_net, so a missing device is a broken image.
    assert os.path.exists("/dev/vhost-net"), "no /dev/vhost-net: is vhost_net in the test host?"


def _tap_counters(netns: str, tap: str) -> tuple[int, int, int, int]:
    """The TAP's own counters on the host: (rx bytes, rx packets, tx bytes, tx packets);
    its rx is what the guest sent. With vhost, the VMM counts nothing itself."""
    out = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", tap],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    stats = json.loads(out)[0]["stats64"]
    rx, tx = stats["rx"], stats["tx"]
    return rx["bytes"], rx["packets"], tx["bytes"], tx["packets"]


def _boot_on_tap(vmm_factory: MakeVmm, demo: DemoImage, netns: str, net: str,
                 cmdline: str = "") -> Vmm:  # fmt: skip
    vmm = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=f"{demo.cmdline} {cmdline}",
                      extra=["--net", net])  # fmt: skip
    vmm.argv = ["ip", "netns", "exec", netns, *vmm.argv]
    vmm.start()
    _link_up(vmm, demo, netns, "qtap0")
    return vmm


def test_vhost_moves_tcp_both_ways_intact_with_offloads(
    vmm_factory: MakeVmm, demo: DemoImage, netns: str
) -> None:
    """vhost=on: ping, then 8 MiB each way byte-exact; frames above an MTU on average on
    the TAP, host to guest, show that the kernel passed the TSO headers through; the
    rings went through no Python (the VMM's frame and kick counters stay at zero).

    Guest to host, whether the guest sends TSO frames is its TCP's choice: busybox nc
    writes 1 KiB at a time, and where vhost acknowledges each write before the next (a
    slow nested guest: 1,155 bytes a frame seen in CI, three tries in a row) nothing
    gathers them. The Python rings, slower to drain, see them gathered:
    test_tcp_in_both_directions_arrives_intact_with_offloads checks that direction."""
    _need_vhost()
    vmm = _boot_on_tap(vmm_factory, demo, netns, "tap=qtap0,vhost=on")
    net = _net_status(vmm)
    assert net["vhost"] is True and {"csum", "tso4", "tso6"} <= set(net["rx_offloads"]), net
    out = vmm.command("ping -c 3 -W 5 10.0.2.2", timeout=60)
    assert "3 packets received" in out, out
    _guest_to_host(vmm, netns)
    _, _, tx1, txp1 = _tap_counters(netns, "qtap0")
    _host_to_guest(vmm, netns)
    _, _, tx2, txp2 = _tap_counters(netns, "qtap0")
    assert (tx2 - tx1) / (txp2 - txp1) > 1514, (tx1, txp1, tx2, txp2)
    net = _net_status(vmm)
    assert net["rx_packets"] == net["tx_packets"] == net["kicks"] == 0, net
    vmm.control("quit")
    assert vmm.wait(30) == 0


def test_vhost_survives_a_driver_reset_and_a_reboot_on_intx(
    vmm_factory: MakeVmm, demo: DemoImage, netns: str
) -> None:
    """vhost=on without MSI (pci=nomsi): the kernel's interrupts reach the guest through
    the VMM's relay and the INTx line. Unbinding the driver resets the device (the kernel
    lets go of the rings); binding it again starts them anew, and traffic flows again; so
    it does after a guest reboot, which builds a new device on the same vhost-net."""
    _need_vhost()
    vmm = _boot_on_tap(vmm_factory, demo, netns, "tap=qtap0,vhost=on", "pci=nomsi")
    irqs = vmm.command("grep virtio /proc/interrupts")
    assert "PCI-MSI" not in irqs and "IO-APIC" in irqs, irqs
    assert "3 packets received" in vmm.command("ping -c 3 -W 5 10.0.2.2", timeout=60)
    dev = vmm.command("basename $(readlink /sys/class/net/eth0/device)").strip()
    drv = "/sys/bus/virtio/drivers/virtio_net"
    vmm.command(f"echo {dev} > {drv}/unbind; echo {dev} > {drv}/bind", timeout=60)
    vmm.command("ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up", timeout=60)
    out = vmm.command("ping -c 3 -W 5 10.0.2.2", timeout=60)
    assert "3 packets received" in out, out
    _guest_to_host(vmm, netns)
    assert _net_status(vmm)["vhost"] is True
    since = vmm.console.mark()
    vmm.type("reboot\n")
    vmm.console.wait_for(demo.ready_line, BOOT_TIMEOUT, since)
    vmm.command("ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up", timeout=60)
    out = vmm.command("ping -c 3 -W 5 10.0.2.2", timeout=60)
    assert "3 packets received" in out, out
    assert vmm.control("status")["reboots"] == 1
    vmm.control("quit")
    assert vmm.wait(30) == 0
