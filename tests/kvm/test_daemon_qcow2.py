"""qumrand runs a native VM on a qcow2 overlay: its qemu-storage-daemon is started with
the VM, found again after a qumrand restart, stopped with the VM; a second VM on the same
image is refused with the disk named."""

from __future__ import annotations

import json
import os
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


def qumran(
    daemon: Daemon, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUMRAN, *args], capture_output=True, text=True, env=daemon.env,
                          timeout=180, input=stdin)  # fmt: skip


def qumran_json(daemon: Daemon, *args: str) -> Any:
    proc = qumran(daemon, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def define(daemon: Daemon, demo: DemoImage, tmp: Path, name: str, disk: Path) -> None:
    doc = {
        "name": name, "memory": "256M", "hypervisor": "native",
        "boot": {"kernel": str(demo.kernel), "initrd": str(demo.initrd), "cmdline": demo.cmdline},
        "disks": [{"path": str(disk), "format": "qcow2"}],
    }  # fmt: skip
    path = tmp / f"{name}.json.yaml"
    path.write_text(json.dumps(doc))
    qumran_json(daemon, "define", str(path))


def storage_pid(daemon: Daemon, name: str) -> int:
    uuid = daemon.vm(name)["uuid"]
    return int((daemon.root / "run" / "vms" / uuid[:13] / "storage.pid").read_text())


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_a_native_vm_on_a_qcow2_overlay(
    kvm_daemon: Daemon, demo: DemoImage, tmp_path: Path
) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
                    str(top)], check=True)  # fmt: skip
    define(kvm_daemon, demo, tmp_path, "q-one", top)
    proc = qumran(kvm_daemon, "start", "q-one", "--console", "--until", READY_LINE,
                  "--timeout", "150")  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    qsd = storage_pid(kvm_daemon, "q-one")
    assert alive(qsd) and os.stat(f"/proc/{qsd}").st_uid == os.getuid()  # the VM's owner

    # Another VM on the same image: refused before its guest starts, the disk named.
    define(kvm_daemon, demo, tmp_path, "q-two", top)
    refused = qumran(kvm_daemon, "start", "q-two")
    assert refused.returncode != 0
    assert f"disks[0]: {top} is in use by another VM" in refused.stderr, refused.stderr
    assert kvm_daemon.vm("q-two")["state"] == "shutoff"

    marker = "qumran-qcow2-ok"
    proc = qumran(kvm_daemon, "console", "q-one", "--until", "WROTE=0", "--timeout", "90",
                  stdin=f"printf {marker} | dd of=/dev/vda conv=fsync 2>/dev/null; "
                  "echo WROTE=$?\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]

    kvm_daemon.restart()  # the VM and its storage daemon go on; the new qumrand finds both
    assert kvm_daemon.vm("q-one")["state"] == "running"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # disk bytes: from the storage daemon, adopted
        last = (qumran_json(kvm_daemon, "domstats", "q-one")["samples"] or [{}])[-1]
        if (last.get("disk_write_bytes") or 0) >= 512:
            break
        time.sleep(1)
    assert last["disk_write_bytes"] >= 512, last

    qumran_json(kvm_daemon, "destroy", "q-one")
    kvm_daemon.wait_state("q-one", "shutoff", timeout=60)
    deadline = time.monotonic() + 30
    while alive(qsd) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(qsd), "the storage daemon outlived its VM"
    check = subprocess.run(["qemu-img", "check", str(top)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    raw = tmp_path / "top.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(top), str(raw)], check=True)
    assert raw.read_bytes()[: len(marker)] == marker.encode()
    assert b"qumran" not in base.read_bytes()  # the base is untouched
