"""The QEMU driver's own logic, with stand-in binaries where QEMU would run: the checks
before launch, and what a person is told when the hypervisor fails or hangs."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qumran.config.spec import VmSpec
from qumran.drivers.base import Owner, RunPaths
from qumran.drivers.process import ProcState, proc_state
from qumran.drivers.qemu import QemuDriver
from qumran.errors import HypervisorError, InvalidArgument, Timeout

OWNER = Owner(os.getuid(), os.getgid())


@pytest.fixture
def paths() -> Iterator[RunPaths]:
    root = Path(tempfile.mkdtemp(prefix="q-drv-", dir="/tmp"))
    yield RunPaths(root)
    shutil.rmtree(root)


def spec(**fields: Any) -> VmSpec:
    return VmSpec.model_validate(
        {"name": "v", "memory": 64, "boot": {"kernel": "/bin/sh"}, **fields}
    )


def stand_in(paths: RunPaths, script: str) -> str:
    """An executable that plays QEMU's part: ``script`` is its shell body."""
    path = paths.root / "qemu"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


def test_check_names_the_field_and_the_path(tmp_path: Path) -> None:
    driver = QemuDriver(accel="tcg")
    driver.check(spec(), OWNER)
    unseen = "cannot be opened by uid .* [(]missing, or no permission[)]; check the path"
    with pytest.raises(InvalidArgument, match=rf"^boot.kernel: /no/vmlinuz {unseen}"):
        driver.check(spec(boot={"kernel": "/no/vmlinuz"}), OWNER)
    with pytest.raises(InvalidArgument, match=rf"^boot.initrd: /no/initrd {unseen}"):
        driver.check(spec(boot={"kernel": "/bin/sh", "initrd": "/no/initrd"}), OWNER)
    with pytest.raises(InvalidArgument, match=rf"^boot.kernel: {tmp_path} is not a regular file"):
        driver.check(spec(boot={"kernel": str(tmp_path)}), OWNER)
    disk = {"path": str(tmp_path / "disk.img")}
    with pytest.raises(InvalidArgument, match=rf"^disks\[1\].path: .*disk.img {unseen}"):
        driver.check(spec(disks=[{"path": "/bin/sh", "readonly": True}, disk]), OWNER)


def test_a_missing_binary_is_reported_not_raised(paths: RunPaths) -> None:
    driver = QemuDriver(binary=str(paths.root / "no-qemu"))
    info = driver.host_info()
    assert not info.available and "does not run" in info.reason

    async def main() -> None:
        with pytest.raises(HypervisorError, match=r"cannot run .*no-qemu: No such file"):
            await driver.launch(spec(), paths, OWNER, lambda e, d: None)

    asyncio.run(main())


def test_an_early_exit_quotes_the_hypervisors_own_words(paths: RunPaths) -> None:
    paths.log.write_text("output of an earlier run\n")
    binary = stand_in(paths, "echo 'qemu-system-x86_64: -device foo: not found' >&2; exit 1")

    async def main() -> None:
        with pytest.raises(HypervisorError) as caught:
            await QemuDriver(binary=binary, accel="tcg").launch(spec(), paths, OWNER, print)
        assert caught.value.message == (
            "QEMU failed to start VM v: qemu-system-x86_64: -device foo: not found"
        )

    asyncio.run(main())


def test_a_hypervisor_that_never_answers_is_killed(paths: RunPaths) -> None:
    binary = stand_in(paths, f"echo $$ > {paths.root}/sh.pid; echo starting; exec sleep 60")

    async def main() -> None:
        start = time.monotonic()
        driver = QemuDriver(binary=binary, accel="tcg", start_timeout=0.5)
        with pytest.raises(
            Timeout,
            match=r"did not open its monitor within 0\.5 s; it was killed\. Its output: starting",
        ):
            await driver.launch(spec(), paths, OWNER, print)
        assert time.monotonic() - start < 5
        pid = int((paths.root / "sh.pid").read_text())
        assert proc_state(pid) is ProcState.GONE  # killed and reaped

    asyncio.run(main())
