"""The QEMU driver against real QEMU (TCG) and the demo guest: launch, console, pause,
reset, power-down, attach from a second driver, and QEMU's own errors."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qumran.config.spec import VmSpec
from qumran.drivers.base import GuestEvent, Owner, RunPaths
from qumran.drivers.process import ProcState
from qumran.drivers.qemu import QemuDriver, QemuInstance
from qumran.errors import HypervisorError
from qumran.images.demo import DemoImage, build_demo

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]

BOOT_TIMEOUT = 120.0  # ~3 s on an idle host; TCG on a busy 2-core machine is slower
POWERDOWN_TIMEOUT = 60.0
OWNER = Owner(os.getuid(), os.getgid())
Events = list[tuple[GuestEvent, str]]


@pytest.fixture(scope="module")
def demo() -> DemoImage:
    return build_demo()


@pytest.fixture
def paths() -> Iterator[RunPaths]:
    root = Path(tempfile.mkdtemp(prefix="q-qemu-", dir="/tmp"))  # UNIX socket paths are short
    yield RunPaths(root)
    shutil.rmtree(root)


def demo_spec(demo: DemoImage, name: str = "drv", **fields: Any) -> VmSpec:
    boot = {"kernel": str(demo.kernel), "initrd": str(demo.initrd), "cmdline": demo.cmdline}
    return VmSpec.model_validate({"name": name, "memory": "256M", "boot": boot, **fields})


class Console:
    """The guest's serial console, read through the socket the daemon would use."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.seen = bytearray()

    @classmethod
    async def open(cls, paths: RunPaths) -> Console:
        return cls(*await asyncio.open_unix_connection(str(paths.console)))

    async def expect(self, text: str, timeout: float = 30.0) -> None:
        """Read until ``text`` appears after what earlier calls consumed."""
        needle = text.encode()
        try:
            async with asyncio.timeout(timeout):
                while needle not in self.seen:
                    chunk = await self.reader.read(4096)
                    assert chunk, f"console closed before {text!r}: {self.seen.decode()}"
                    self.seen += chunk
        except TimeoutError:
            raise AssertionError(f"no {text!r} in {timeout} s: {self.seen.decode()}") from None
        del self.seen[: self.seen.index(needle) + len(needle)]

    async def type(self, line: str) -> None:
        self.writer.write(line.encode() + b"\n")
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def exit_status(instance: QemuInstance, timeout: float = POWERDOWN_TIMEOUT) -> int:
    assert instance.process.popen is not None
    return await asyncio.to_thread(instance.process.popen.wait, timeout)


def kill_if_running(instance: QemuInstance) -> None:
    if instance.process.reap() is None:
        os.kill(instance.pid, signal.SIGKILL)
        assert instance.process.popen is not None
        instance.process.popen.wait(10)


def test_boot_console_pause_reset_and_powerdown(demo: DemoImage, paths: RunPaths) -> None:
    events: Events = []

    async def scenario() -> None:
        start = time.monotonic()
        instance = await QemuDriver(accel="tcg").launch(
            demo_spec(demo), paths, OWNER, lambda e, d: events.append((e, d))
        )
        qmp_ready = time.monotonic() - start
        try:
            console = await Console.open(paths)
            await console.expect(demo.ready_line, BOOT_TIMEOUT)
            ready = time.monotonic() - start
            print(f"\nTCG: launch-to-QMP {qmp_ready:.3f} s, launch-to-ready-line {ready:.2f} s")

            assert Path(f"/proc/{instance.pid}/comm").read_text().strip() == "qumran-drv"
            assert paths.pidfile.read_text().split()[0] == str(instance.pid)
            await console.type("echo hello-$((6*7))")
            await console.expect("hello-42")

            await instance.pause()
            assert await instance.is_paused() and await instance.status() == "paused"
            await instance.resume()
            assert not await instance.is_paused()

            await instance.reset()
            await console.expect(demo.ready_line, BOOT_TIMEOUT)
            # The host's own reset is the daemon's doing, not a guest event (QMP says
            # guest: false); the firmware may reset once more by itself, which is.
            assert (GuestEvent.RESET, "host-qmp-system-reset") not in events
            events[2:] = []

            await instance.request_reboot()  # Ctrl-Alt-Del: the demo's kernel restarts
            await console.expect(demo.ready_line, BOOT_TIMEOUT)
            await until(lambda: (GuestEvent.RESET, "guest-reset") in events)

            powerdown = time.monotonic()
            await instance.powerdown()
            assert await exit_status(instance) == 0
            print(f"TCG: powerdown-to-exit {time.monotonic() - powerdown:.2f} s")
            await until(lambda: events[-1] == (GuestEvent.SHUTDOWN, "guest-shutdown"))
            assert events[:2] == [(GuestEvent.STOP, ""), (GuestEvent.RESUME, "")]
            with pytest.raises(HypervisorError, match="disconnected"):
                await instance.status()
            console.close()
        finally:
            await instance.close()
            kill_if_running(instance)

    asyncio.run(scenario())
    assert not paths.monitor.exists() and not paths.console.exists()  # QEMU removed them
    assert "QUMRAN-DEMO READY" in paths.console_log.read_text(errors="replace")


def test_attach_from_a_second_driver(demo: DemoImage, paths: RunPaths) -> None:
    spec = demo_spec(demo, "drv2")

    async def scenario() -> None:
        first = await QemuDriver(accel="tcg").launch(spec, paths, OWNER, lambda e, d: None)
        try:
            console = await Console.open(paths)
            await console.expect(demo.ready_line, BOOT_TIMEOUT)
            await first.close()  # the daemon goes away; QEMU keeps running

            # A stopped process accepts the connection but greets only after SIGCONT.
            os.kill(first.pid, signal.SIGSTOP)
            await until(lambda: first.process.state() is ProcState.STOPPED)
            events: Events = []
            second = await QemuDriver().attach(
                spec, paths, first.pid, lambda e, d: events.append((e, d))
            )
            os.kill(first.pid, signal.SIGCONT)
            assert second.pid == first.pid and second.process.popen is None
            assert await second.status() == "running"

            await second.pause()
            await until(lambda: events == [(GuestEvent.STOP, "")])
            await second.resume()
            await console.type("echo still-$((2*21))")
            await console.expect("still-42")
            await second.powerdown()
            assert await exit_status(first) == 0
            await until(lambda: events[-1] == (GuestEvent.SHUTDOWN, "guest-shutdown"))
            await second.close()
            console.close()
        finally:
            await first.close()
            kill_if_running(first)

    asyncio.run(scenario())


def test_attach_refuses_a_process_that_is_not_this_vms_qemu(
    demo: DemoImage, paths: RunPaths
) -> None:
    """A QEMU answers on the monitor socket, but not the process the daemon recorded."""
    other = subprocess.Popen(["sleep", "60"])

    async def scenario() -> None:
        spec = demo_spec(demo)
        first = await QemuDriver(accel="tcg").launch(spec, paths, OWNER, lambda e, d: None)
        try:
            with pytest.raises(HypervisorError, match=rf"answered by process {first.pid} "):
                await QemuDriver().attach(spec, paths, other.pid, lambda e, d: None)
        finally:
            await first.close()
            kill_if_running(first)

    try:
        asyncio.run(scenario())
    finally:
        other.kill()
        other.wait()


def test_a_bad_kernel_is_a_hypervisor_error_in_qemus_words(paths: RunPaths) -> None:
    not_a_kernel = paths.root / "vmlinuz"
    not_a_kernel.write_bytes(b"this is no kernel\n" * 100)
    spec = VmSpec.model_validate(
        {"name": "bad", "memory": 64, "boot": {"kernel": str(not_a_kernel)}}
    )

    async def scenario() -> None:
        start = time.monotonic()
        with pytest.raises(HypervisorError) as caught:
            await QemuDriver(accel="tcg").launch(spec, paths, OWNER, lambda e, d: None)
        assert time.monotonic() - start < 10
        assert caught.value.message == "QEMU failed to start VM bad: qemu: invalid kernel header"

    asyncio.run(scenario())


def test_disks_nics_and_vnc_are_accepted_by_qemu(paths: RunPaths) -> None:
    """No guest needed: QEMU parses the whole command line before its monitor answers."""
    raw = paths.root / "data.raw"
    raw.write_bytes(b"\0" * (1 << 20))
    qcow2 = paths.root / "root,1.qcow2"  # a comma, to exercise escaping
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "16M"], check=True)
    spec = VmSpec.model_validate(
        {
            "name": "devs",
            "memory": 64,
            "boot": {"disk": 1},
            "disks": [
                {"path": str(raw), "readonly": True},
                {"path": str(qcow2), "format": "qcow2"},
            ],
            "nics": [{}, {"mac": "52:54:00:00:00:02"}],
            "graphics": True,
        }
    )
    unhandled: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unhandled.append(ctx))
        instance = await QemuDriver(accel="tcg").launch(spec, paths, OWNER, lambda e, d: None)
        try:
            blocks = await instance.monitor.execute("query-block")
            assert isinstance(blocks, list)
            nodes = {b["inserted"]["node-name"]: b["inserted"] for b in blocks if "inserted" in b}
            assert nodes["disk0"]["ro"] is True and nodes["disk1"]["drv"] == "qcow2"
            display = await instance.open_display()  # over QMP: no socket path exists
            with display:
                display.settimeout(10)
                assert display.recv(12) == b"RFB 003.008\n"
            assert not list(paths.root.glob("*vnc*"))
            # kill -9 is a supported way to destroy a VM: the session just ends.
            os.kill(instance.pid, signal.SIGKILL)
            assert await exit_status(instance, 10) == -signal.SIGKILL
            await until(lambda: not instance.monitor.connected)
            with pytest.raises(HypervisorError):
                await instance.reset()
        finally:
            await instance.close()
            kill_if_running(instance)

    asyncio.run(scenario())
    assert unhandled == []
