"""The whole stack under a real KVM: qumran -> qumrand -> qumran-vmm or QEMU -accel kvm.

Runs inside the KVM test host, where the QEMU driver picks KVM by itself (the CPU has
svm and /dev/kvm works) and the native driver is available.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir
from qumran.images import READY_LINE, DemoImage

pytestmark = pytest.mark.kvm

QUMRAN = str(Path(sys.executable).parent / "qumran")


@pytest.fixture
def kvm_daemon() -> Iterator[Daemon]:
    root = short_tmpdir()
    # The first qumrand in a fresh test host imports FastAPI and pydantic under nested
    # emulation, from a cold page cache, on a loaded machine: seen to take over 20 s.
    daemon = Daemon(root, driver="real", start_timeout=120)
    daemon.start()
    yield daemon
    daemon.cleanup()
    remove_tmpdir(root)


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
    info = qumran_json(kvm_daemon, "start", name)
    assert info["state"] == "running"
    proc = qumran(kvm_daemon, "console", name, "--until", READY_LINE, "--timeout", "150")
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    qumran_json(kvm_daemon, "shutdown", name)
    info = kvm_daemon.wait_state(name, "shutoff", timeout=90)
    assert info["reason"] == "shutdown"
