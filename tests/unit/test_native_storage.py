"""The native driver's qemu-storage-daemon, for real (no guest): started, found again by
a new daemon, stopped, and refused with the disk named when another VM holds the image."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qumran.config.spec import VmSpec
from qumran.drivers import rundir
from qumran.drivers.base import Owner, RunPaths
from qumran.drivers.native import storage
from qumran.drivers.native.storage import StorageDaemon
from qumran.drivers.process import ProcState, Spawned
from qumran.errors import HypervisorError, InvalidState
from qumran.vmm.devices.virtio.vhost_user_blk import VhostUserBackend

pytestmark = pytest.mark.skipif(storage.binary() is None, reason="needs qemu-storage-daemon")
OWNER = Owner(os.getuid(), os.getgid())


def _spec(tmp: Path, name: str = "web") -> VmSpec:
    (tmp / "vmlinuz").write_bytes(b"\0" * 4096)
    image = tmp / "a.qcow2"
    if not image.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "32M"], check=True)
    doc: dict[str, Any] = {"name": name, "hypervisor": "native", "memory": "256M",
                           "boot": {"kernel": str(tmp / "vmlinuz")},
                           "disks": [{"path": str(image), "format": "qcow2"}]}  # fmt: skip
    return VmSpec.model_validate(doc)


def _write_and_read(backend: VhostUserBackend) -> None:
    """4 KiB written to sector 8 and read back, through the rings."""
    from test_vhost_user_blk import T_IN, T_OUT, Driver

    guest = Driver(backend)
    try:
        guest.bring_up()
        guest.submit(T_OUT, 8, b"x" * 4096)
        guest.wait_used(1)
        guest.submit(T_IN, 8, read=4096)
        guest.wait_used(2)
    finally:
        guest.close()


def _paths(tmp: Path, vm: str) -> RunPaths:
    return rundir.create(tmp / "run" / "vms" / vm)


def test_start_serve_adopt_and_stop(tmp_path: Path) -> None:
    spec, paths = _spec(tmp_path), _paths(tmp_path, "web")

    async def run() -> None:
        disks = await StorageDaemon.start(spec, storage.exports_of(spec), paths, OWNER)
        sock = storage.socket_path(paths, 0)
        assert (sock.parent.stat().st_mode & 0o777, sock.parent.parent.stat().st_mode & 0o777) \
            == (0o700, 0o711)  # fmt: skip
        # Its greeting came after the export: the vhost-user socket answers at once.
        before = await disks.block_io()
        backend = await asyncio.to_thread(VhostUserBackend.open, str(sock))
        assert backend.hello.config[:8] == (32 << 11).to_bytes(8, "little")
        await asyncio.to_thread(_write_and_read, backend)
        backend.close()
        after = await disks.block_io()  # the 4 KiB each way, and what qcow2 adds to it
        assert after[0] - before[0] >= 4096 and after[1] - before[1] >= 4096, (before, after)
        await disks.close()  # qumrand goes away; the storage daemon stays
        assert disks.process.state() is ProcState.RUNNING
        again = await StorageDaemon.adopt(spec, paths)
        assert again is not None and again.process.pid == disks.process.pid
        await again.stop()
        assert again.process.state() is ProcState.GONE
        assert not sock.parent.exists()

    asyncio.run(run())


def test_an_image_another_vm_holds_is_refused_with_the_disk_named(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    other = _spec(tmp_path, "db")

    async def run() -> None:
        first = await StorageDaemon.start(spec, storage.exports_of(spec), _paths(tmp_path, "web"),
                                          OWNER)  # fmt: skip
        try:
            with pytest.raises(InvalidState) as refused:
                await StorageDaemon.start(other, storage.exports_of(other),
                                          _paths(tmp_path, "db"), OWNER)  # fmt: skip
            assert str(refused.value).startswith(
                f"disks[0]: {tmp_path / 'a.qcow2'} is in use by another VM (its write lock is held"
            ), refused.value
        finally:
            await first.stop()

    asyncio.run(run())


def test_no_storage_daemon_to_adopt(tmp_path: Path) -> None:
    spec, paths = _spec(tmp_path), _paths(tmp_path, "web")
    assert asyncio.run(StorageDaemon.adopt(spec, paths)) is None


def test_a_storage_daemon_left_from_an_earlier_run_is_stopped_at_the_next_start(
    tmp_path: Path,
) -> None:
    """Its VM ended while qumrand was away: nobody stopped it, and it still holds the
    image's lock; the VM's next start stops it rather than be refused by it."""
    spec = _spec(tmp_path)

    async def run() -> None:
        old = await StorageDaemon.start(spec, storage.exports_of(spec), _paths(tmp_path, "web"),
                                        OWNER)  # fmt: skip
        await old.close()
        new = await StorageDaemon.start(spec, storage.exports_of(spec), _paths(tmp_path, "web"),
                                        OWNER)  # fmt: skip
        assert old.process.state() is ProcState.GONE
        await new.stop()

    asyncio.run(run())


# A monitor that meets QEMU 7.2's start-up race once: it greets the first client and
# hangs up on its capabilities, as the storage daemon does about one start in 25 to 50.
_RACY_MONITOR = r"""
import json, socket, sys
server = socket.socket(fileno=int(sys.argv[1]))
greeting = json.dumps({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7},
                                           "package": ""}, "capabilities": []}}).encode()
first, _ = server.accept()
first.sendall(greeting + b"\r\n")
first.recv(4096)
first.close()
conn, _ = server.accept()
conn.sendall(greeting + b"\r\n")
while chunk := conn.recv(4096):  # one command at a time, each answered
    ask = json.loads(chunk)
    conn.sendall(json.dumps({"return": {}, "id": ask.get("id")}).encode() + b"\r\n")
"""


def test_a_monitor_that_hangs_up_during_negotiation_is_connected_to_again(
    tmp_path: Path,
) -> None:
    paths = _paths(tmp_path, "web")
    with rundir.RunDir(paths) as run_dir:
        listening = run_dir.listen(storage.MONITOR)
    popen = subprocess.Popen([sys.executable, "-c", _RACY_MONITOR, str(listening.fileno())],
                             pass_fds=[listening.fileno()])  # fmt: skip
    listening.close()
    try:

        async def run() -> None:
            monitor = await StorageDaemon._open("web", paths, Spawned(popen.pid, popen))
            assert monitor.connected
            assert await monitor.execute("query-block-exports") == {}
            await monitor.close()

        asyncio.run(run())
    finally:
        popen.kill()
        popen.wait()


def test_a_monitor_whose_daemon_died_is_not_connected_to_again(tmp_path: Path) -> None:
    paths = _paths(tmp_path, "web")
    dead = subprocess.Popen(["true"])
    dead.wait()
    with pytest.raises(HypervisorError, match="cannot connect to"):
        asyncio.run(StorageDaemon._open("web", paths, Spawned(dead.pid, dead)))


def test_a_storage_daemon_that_dies_while_being_adopted_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real storage daemon that ends while a new qumrand connects to it: the error says it
    exited and what it last wrote, not only that its monitor did not answer."""
    spec, paths = _spec(tmp_path), _paths(tmp_path, "web")

    async def run() -> None:
        disks = await StorageDaemon.start(spec, storage.exports_of(spec), paths, OWNER)
        await disks.close()
        with open(paths.root / storage.LOG, "a") as f:
            f.write("qemu-storage-daemon: the last words\n")

        async def dies(vm: str, paths: RunPaths, process: Spawned) -> Any:
            os.kill(process.pid, 9)
            assert disks.process.popen is not None
            disks.process.popen.wait(10)  # reaped: gone
            raise HypervisorError("cannot open the QMP monitor: Negotiation failed")

        monkeypatch.setattr(StorageDaemon, "_open", staticmethod(dies))
        assert await StorageDaemon.adopt(spec, paths) is None

    asyncio.run(run())
    said = [r.getMessage() for r in caplog.records if "re-attach" in r.getMessage()]
    assert said and "it has exited" in said[0] and "the last words" in said[0], said
