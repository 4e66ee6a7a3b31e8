"""virtio-blk through vhost-user under a real KVM: the demo guest on a qcow2 overlay that
qemu-storage-daemon serves, and the disk surviving a restart of that daemon."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from vmm_harness import Vmm

from qumran.images.demo import DemoImage
from storage_daemon import QSD, StorageDaemon

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(QSD is None, reason="needs qemu-storage-daemon")]  # fmt: skip
MakeVmm = Callable[..., Vmm]
BOOT_TIMEOUT = 120.0
BASE_TEXT = b"qumran-base-sector"
MiB = 1 << 20


@pytest.fixture
def overlay(workdir: Path) -> Iterator[StorageDaemon]:
    """A 64 MiB qcow2 base with text in sector 0, a qcow2 overlay on it, and a storage
    daemon serving the overlay (its socket in a folder of its own)."""
    raw = workdir / "base.raw"
    raw.write_bytes(BASE_TEXT.ljust(512, b"\0"))
    with open(raw, "r+b") as f:
        f.truncate(64 * MiB)
    base, top = workdir / "base.qcow2", workdir / "top.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(base)], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
                    str(top)], check=True)  # fmt: skip
    (workdir / "qsd").mkdir()
    daemon = StorageDaemon(top, workdir / "qsd" / "top.sock")
    daemon.start()
    yield daemon
    daemon.stop()


def _read_back(image: Path, offset: int, length: int) -> bytes:
    raw = image.with_suffix(".back")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    with open(raw, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _boot(vmm_factory: MakeVmm, demo: DemoImage, sock: Path) -> Vmm:
    vmm = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=demo.cmdline,
                      extra=["--disk", f"vhost-user={sock}"])  # fmt: skip
    vmm.start()
    vmm.console.wait_for(demo.ready_line, BOOT_TIMEOUT)
    return vmm


def test_guest_reads_the_backing_file_and_writes_land_in_the_overlay(
    vmm_factory: MakeVmm, demo: DemoImage, overlay: StorageDaemon, workdir: Path
) -> None:
    vmm = _boot(vmm_factory, demo, overlay.sock)
    assert vmm.command("cat /sys/block/vda/size").strip() == str(64 * MiB // 512)
    assert vmm.command(f"head -c {len(BASE_TEXT)} /dev/vda").strip() == BASE_TEXT.decode()
    irqs = vmm.command("grep virtio /proc/interrupts")
    assert "PCI-MSI" in irqs, irqs
    vmm.command("printf overlay-write-%s 42 | dd of=/dev/vda bs=512 seek=2048 conv=sync,fsync "
                "oflag=direct 2>/dev/null; echo dd=$?", timeout=60)  # fmt: skip
    assert vmm.command("dd if=/dev/vda bs=512 skip=2048 count=1 iflag=direct 2>/dev/null"
                       " | head -c 16").strip() == "overlay-write-42"  # fmt: skip
    status = vmm.control("status")["devices"][0]
    assert status["vhost_user"] == str(overlay.sock) and status["connected"], status
    vmm.type("poweroff\n")
    assert vmm.wait(60) == 0
    overlay.stop()
    top = overlay.image
    check = subprocess.run(["qemu-img", "check", str(top)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert _read_back(top, MiB, 16) == b"overlay-write-42"
    assert _read_back(workdir / "base.qcow2", MiB, 16) == bytes(16)  # the base is untouched
    # What the guest wrote is in the overlay itself: one allocated cluster, not in the base.
    info = subprocess.run(["qemu-img", "map", "--output=json", str(top)], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert '"depth": 0' in info, info


def test_the_disk_survives_a_restart_of_the_storage_daemon(
    vmm_factory: MakeVmm, demo: DemoImage, overlay: StorageDaemon
) -> None:
    vmm = _boot(vmm_factory, demo, overlay.sock)
    assert vmm.command(f"head -c {len(BASE_TEXT)} /dev/vda").strip() == BASE_TEXT.decode()
    overlay.stop(kill=True)
    # A write the guest issues while nobody serves the disk waits, then completes.
    since = vmm.console.mark()
    vmm.type("printf while-away | dd of=/dev/vda bs=512 seek=4096 conv=sync,fsync oflag=direct"
             " 2>/dev/null; echo AWAY-DONE-$?\n")  # fmt: skip
    overlay.start()
    vmm.console.wait_for(r"AWAY-DONE-0", 120, since)
    assert vmm.command("dd if=/dev/vda bs=512 skip=4096 count=1 iflag=direct 2>/dev/null"
                       " | head -c 10").strip() == "while-away"  # fmt: skip
    status = vmm.control("status")["devices"][0]
    assert status["connected"] and status["reconnects"] == 1, status
    vmm.control("quit")
    assert vmm.wait(30) == 0
    overlay.stop()
    assert _read_back(overlay.image, 4096 * 512, 10) == b"while-away"


def test_a_missing_back_end_fails_before_the_guest_starts(
    vmm_factory: MakeVmm, demo: DemoImage, workdir: Path
) -> None:
    sock = workdir / "nobody"
    vmm = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=demo.cmdline,
                      extra=["--disk", f"vhost-user={sock}"])  # fmt: skip
    vmm.start()
    assert vmm.wait(60) == 1
    assert f"--disk vhost-user={sock}: cannot connect to {sock}" in vmm.stderr, vmm.stderr
