"""Bad input: one clear line on stderr, status 1, nothing left behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from vmm_harness import QUMRAN_VMM

from qumran.images.demo import DemoImage

pytestmark = pytest.mark.kvm


def _run(workdir: Path, *args: str) -> tuple[int, str]:
    argv = [QUMRAN_VMM, "--name", "bad", "--control", str(workdir / "control.sock"),
            "--console", f"socket:{workdir / 'console.sock'}", *args]  # fmt: skip
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert list(workdir.glob("*.sock")) == []
    return proc.returncode, proc.stderr


def _error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("qumran-vmm: error: ")
    return lines[0]


def test_not_a_bzimage(workdir: Path, demo: DemoImage) -> None:
    status, err = _run(workdir, "--kernel", str(demo.initrd))
    assert status == 1 and "not a bzImage" in _error_line(err)


def test_initrd_too_large_for_memory(workdir: Path, demo: DemoImage) -> None:
    big = workdir / "big.img"
    with open(big, "wb") as f:
        f.truncate(200 << 20)
    status, err = _run(
        workdir, "--kernel", str(demo.kernel), "--initrd", str(big), "--memory", "128M"
    )
    assert status == 1 and "memory too small" in _error_line(err)


def test_memory_too_small_for_the_kernel(workdir: Path, demo: DemoImage) -> None:
    status, err = _run(workdir, "--kernel", str(demo.kernel), "--memory", "48M")
    line = _error_line(err)
    assert status == 1 and "memory too small" in line and "MiB" in line


def test_missing_kvm_device(workdir: Path, demo: DemoImage) -> None:
    status, err = _run(workdir, "--kernel", str(demo.kernel), "--kvm-device", "/nonexistent/kvm")
    assert status == 1 and "/nonexistent/kvm" in _error_line(err)
