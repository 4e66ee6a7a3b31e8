"""The KVM test host for real: boots under QEMU TCG on this machine and runs host commands
next to a working /dev/kvm."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from kvm import tinykernel  # tests/kvm's hand-made bzImages

from .runner import BOOT_FAILED_STATUS, TIMEOUT_STATUS, run_in_kvmhost

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]


def test_kvm_device_and_svm_are_there() -> None:
    status, output = run_in_kvmhost(
        ["sh", "-c", "test -c /dev/kvm && grep -c svm /proc/cpuinfo"], timeout=120
    )
    assert status == 0, output
    assert int(output.strip()) >= 1


def test_host_python_talks_to_kvm() -> None:
    # KVM_GET_API_VERSION = _IO(KVMIO, 0x00) = 0xAE00; the stable API answers 12.
    code = "import fcntl, os; print(fcntl.ioctl(os.open('/dev/kvm', os.O_RDWR), 0xAE00))"
    status, output = run_in_kvmhost([sys.executable, "-c", code], timeout=120)
    assert (status, output.strip()) == (0, "12")


def test_exit_status_cwd_and_shares(tmp_path: Path) -> None:
    script = "pwd; echo result > out.txt; touch /etc/qumran-kvmhost-probe; exit 7"
    status, output = run_in_kvmhost(
        ["sh", "-c", script], timeout=120, cwd=tmp_path, shares=[tmp_path]
    )
    assert status == 7, output
    assert output.splitlines() == [str(tmp_path)]
    assert (tmp_path / "out.txt").read_text() == "result\n"  # the share is written through
    assert not Path("/etc/qumran-kvmhost-probe").exists()  # the rest only in guest RAM


def test_timeout_kills_the_guest(tmp_path: Path) -> None:
    script = "echo '<3>qumran-probe: about to hang' >/dev/kmsg; echo started; sleep 600"
    log = tmp_path / "kernel.log"
    status, output = run_in_kvmhost(["sh", "-c", script], timeout=15, kernel_log=log, cpus=2)
    assert status == TIMEOUT_STATUS
    assert output.startswith("started\n") and "timed out" in output
    # The kernel's own words stay off the job's output, and are shown when the host hangs.
    note = output.split("timed out", 1)[1]
    assert "the test host's kernel said" in note and "qumran-probe: about to hang" in note
    assert "qumran-probe" in log.read_text()
    # Where its CPUs were, from QEMU's monitor: both vCPUs' registers and local APICs.
    cpus = output.split("the frozen test host's CPUs", 1)[1]
    assert cpus.count("RIP=") == 2 and cpus.count("dumping local APIC state") == 2


def test_a_dead_test_host_shows_its_kernel_log() -> None:
    status, output = run_in_kvmhost(["sh", "-c", "echo c >/proc/sysrq-trigger"], timeout=120)
    assert status == BOOT_FAILED_STATUS
    assert "sysrq triggered crash" in output.split("the test host's kernel said", 1)[1]
    assert "the test host's QEMU exited with status 0" in output  # panic=-1: a reset


def test_a_nested_triple_fault_leaves_its_kvm_trace(tmp_path: Path) -> None:
    """A tiny guest that triple faults, under qumran-vmm in the test host: the trace shows
    the shutdown exit with the exception that was being delivered, which the VMM itself
    never sees on AMD (KVM resets the vCPU first)."""
    kernel = tmp_path / "crash.bzImage"
    kernel.write_bytes(tinykernel.triple_fault())
    trace = tmp_path / "traces" / "kvm.txt"
    vmm = str(Path(sys.executable).with_name("qumran-vmm"))
    argv = [vmm, "--name", "crash", "--kernel", str(kernel), "--memory", "64M", "--console", "none"]
    status, output = run_in_kvmhost(argv, timeout=300, kvm_trace=trace)
    assert status == 2, output  # qumran-vmm: the guest crashed
    assert f"kvm trace up to it: {trace}" in output
    last = trace.read_text().splitlines()[-1]
    assert "kvm_exit" in last and "reason shutdown" in last, last
