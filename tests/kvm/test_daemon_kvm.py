"""The whole stack under a real KVM: qumran -> qumrand -> qumran-vmm or QEMU -accel kvm.

Runs inside the KVM test host, where the QEMU driver picks KVM by itself (the CPU has
svm and /dev/kvm works) and the native driver is available.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import Daemon
from qumran.images.demo import READY_LINE, DemoImage

pytestmark = pytest.mark.kvm

QUMRAN = str(Path(sys.executable).parent / "qumran")


def qumran(daemon: Daemon, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [QUMRAN, *args], capture_output=True, text=True, env=daemon.env, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def qumran_json(daemon: Daemon, *args: str) -> Any:
    proc = qumran(daemon, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def define(daemon: Daemon, demo: DemoImage, tmp: Path, name: str, hypervisor: str) -> None:
    doc = {
        "name": name, "memory": "256M", "vcpus": 2, "hypervisor": hypervisor,
        "boot": {"kernel": str(demo.kernel), "initrd": str(demo.initrd), "cmdline": demo.cmdline},
    }  # fmt: skip
    path = tmp / f"{name}.json.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    qumran_json(daemon, "define", str(path))


def test_host_reports_kvm(kvm_daemon: Daemon) -> None:
    drivers = {d["driver"]: d for d in qumran_json(kvm_daemon, "host")["drivers"]}
    assert drivers["qemu"]["accelerator"] == "kvm", drivers["qemu"]["reason"]
    assert drivers["native"]["available"] is True


@pytest.mark.parametrize("hypervisor", ["native", "qemu"])
def test_boot_console_and_shutdown(
    kvm_daemon: Daemon, demo: DemoImage, tmp_path: Path, hypervisor: str
) -> None:
    name = f"k-{hypervisor}"
    define(kvm_daemon, demo, tmp_path, name, hypervisor)
    proc = qumran(kvm_daemon, "start", name, "--console", "--until", READY_LINE, "--timeout", "150")
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    assert kvm_daemon.vm(name)["state"] == "running"
    qumran_json(kvm_daemon, "shutdown", name)
    info = kvm_daemon.wait_state(name, "shutoff", timeout=90)
    assert info["reason"] == "shutdown"


def ready_lines_logged(daemon: Daemon, name: str) -> int:
    """How often the guest printed its ready line, from the console log in the run dir."""
    uuid = daemon.vm(name)["uuid"]
    log = daemon.root / "run" / "vms" / uuid[:13] / "console.log"
    return log.read_text(errors="replace").count(READY_LINE)


def test_a_native_vm_writes_its_raw_disk_and_resets(
    kvm_daemon: Daemon, demo: DemoImage, tmp_path: Path
) -> None:
    """qumrand gives qumran-vmm the definition's disks: the guest writes /dev/vda and syncs;
    the reset button boots it again in the same process; after a shutdown the bytes are in
    the image."""
    image = tmp_path / "data.img"
    image.write_bytes(bytes(8 << 20))
    doc = {
        "name": "k-disk", "memory": "256M", "hypervisor": "native",
        "boot": {"kernel": str(demo.kernel), "initrd": str(demo.initrd), "cmdline": demo.cmdline},
        "disks": [{"path": str(image)}],
    }  # fmt: skip
    path = tmp_path / "k-disk.json.yaml"
    path.write_text(json.dumps(doc))
    qumran_json(kvm_daemon, "define", str(path))
    proc = qumran(
        kvm_daemon, "start", "k-disk", "--console", "--until", READY_LINE, "--timeout", "150"
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    pid = kvm_daemon.vm("k-disk")["pid"]
    marker = "qumran-native-disk-ok"
    command = (
        f"printf {marker} | dd of=/dev/vda conv=fsync 2>/dev/null;"
        " echo SIZE=$(cat /sys/block/vda/size)=\n"
    )
    proc = subprocess.run(
        [QUMRAN, "console", "k-disk", "--until", "SIZE=16384=", "--timeout", "90"],
        input=command, capture_output=True, text=True, env=kvm_daemon.env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    # The daemon's statistics count the disk's bytes, from qumran-vmm's own counters.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        last = (qumran_json(kvm_daemon, "domstats", "k-disk")["samples"] or [{}])[-1]
        if (last.get("disk_write_bytes") or 0) >= 512:
            break
        time.sleep(1)
    assert last["disk_read_bytes"] > 0 and last["disk_write_bytes"] >= 512, last

    before = ready_lines_logged(kvm_daemon, "k-disk")
    last_event = qumran_json(kvm_daemon, "events")[-1]["id"]
    qumran_json(kvm_daemon, "reset", "k-disk")
    deadline = time.monotonic() + 150
    while ready_lines_logged(kvm_daemon, "k-disk") == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ready_lines_logged(kvm_daemon, "k-disk") == before + 1
    assert kvm_daemon.vm("k-disk")["pid"] == pid  # the same qumran-vmm, a new boot
    events = qumran_json(kvm_daemon, "events")
    assert ("rebooted", "user") in [
        (e["event"], e["reason"]) for e in events if e["id"] > last_event
    ]

    qumran_json(kvm_daemon, "shutdown", "k-disk")
    kvm_daemon.wait_state("k-disk", "shutoff", timeout=90)
    assert image.read_bytes()[: len(marker)] == marker.encode()
