"""Snapshot and restore in qumran-vmm, under a real KVM: the demo guest counting on its
console and writing to a raw disk is saved, its VMM ended, and a new VMM resumes it."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from vmm_harness import QUMRAN_VMM, Vmm

from qumran.images.demo import DemoImage

pytestmark = pytest.mark.kvm
MakeVmm = Callable[..., Vmm]
BOOT_TIMEOUT = 120.0


def _restored(vmm_factory: MakeVmm, demo: DemoImage, workdir: Path, snap: Path) -> Vmm:
    rdir = workdir / "r"
    rdir.mkdir(exist_ok=True)
    vmm = vmm_factory(demo.kernel)
    vmm.workdir, vmm.control_path = rdir, rdir / "control.sock"
    vmm.stderr_path = rdir / "stderr.txt"
    vmm.argv = [QUMRAN_VMM, "--restore", str(snap), "--control", str(vmm.control_path)]
    return vmm.start()


def test_a_counting_guest_resumes_where_it_was_with_its_disk(
    vmm_factory: MakeVmm, demo: DemoImage, workdir: Path
) -> None:
    image = workdir / "raw.img"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    vmm = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=demo.cmdline,
                      extra=["--disk", str(image), "--rng"])  # fmt: skip
    vmm.start()
    vmm.console.wait_for(demo.ready_line, BOOT_TIMEOUT)
    vmm.command("printf 'before-%s' $((40 + 2)) | dd of=/dev/vda bs=512 conv=sync 2>/dev/null")
    vmm.type("i=0; while true; do i=$((i + 1)); echo count-$i; sleep 0.1; done\n")
    vmm.console.wait_for(r"count-5\r?\n", 60)
    snap = workdir / "vm.snap"
    reply = vmm.control("snapshot", path=str(snap))
    assert reply["ok"] and reply["state"] == "running", reply
    assert snap.is_file() and not Path(f"{snap}.part").exists()
    vmm.control("quit")
    assert vmm.wait(30) == 0
    before = vmm.console.text
    counted = [int(n) for n in re.findall(r"count-(\d+)", before)]

    restored = _restored(vmm_factory, demo, workdir, snap)
    found = restored.console.wait_for(r"count-(\d+)\r?\n", 60)
    first = int(found.group(1))
    # It carries on from a number the first VMM had reached, not from a new boot.
    assert first - 1 in counted, (first, counted[-5:])
    restored.console.wait_for(rf"count-{first + 10}\r?\n", 60)
    assert "Linux version" not in restored.console.text
    restored.type("\x03")  # ^C: the loop ends, the shell answers
    assert restored.command("dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 9") == "before-42"
    restored.command("printf 'after-%s' $((6 * 7)) | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync"
                     " 2>/dev/null")  # fmt: skip
    assert restored.control("status")["state"] == "running"
    restored.type("poweroff\n")
    assert restored.wait(60) == 0
    data = image.read_bytes()
    assert data[:9] == b"before-42" and data[512:520] == b"after-42"


def test_a_changed_byte_is_refused_and_a_tap_like_device_refuses_the_snapshot(
    vmm_factory: MakeVmm, demo: DemoImage, workdir: Path
) -> None:
    vmm = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=demo.cmdline,
                      extra=["--virtio-console", f"socket:{workdir / 'hvc.sock'}"])  # fmt: skip
    vmm.start()
    vmm.console.wait_for(demo.ready_line, BOOT_TIMEOUT)
    refused = vmm.control("snapshot", path=str(workdir / "no.snap"))
    assert not refused["ok"] and "virtio-console" in refused["error"]["message"], refused
    assert not (workdir / "no.snap").exists()
    vmm.control("quit")
    vmm.wait(30)

    plain = vmm_factory(demo.kernel, initrd=demo.initrd, cmdline=demo.cmdline)
    plain.workdir = workdir
    plain.start()
    plain.console.wait_for(demo.ready_line, BOOT_TIMEOUT)
    snap = workdir / "vm.snap"
    assert plain.control("snapshot", path=str(snap))["ok"]
    plain.control("quit")
    plain.wait(30)
    with open(snap, "r+b") as f:  # one byte of the saved machine state
        f.seek(300)
        byte = f.read(1)
        f.seek(300)
        f.write(bytes([byte[0] ^ 1]))
    out = subprocess.run([QUMRAN_VMM, "--restore", str(snap), "--console", "none"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1, out
    assert out.stderr.count("\n") == 1 and "is damaged" in out.stderr, out.stderr
