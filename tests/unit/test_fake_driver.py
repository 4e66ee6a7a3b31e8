"""The fake driver runs real stand-in VM processes: the daemon's tests rely on these
behaving like a hypervisor process (console, monitor, signals, exit status, attach)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qumran.config.spec import VmSpec
from qumran.drivers.base import GuestEvent, Owner, RunPaths
from qumran.drivers.fake import READY_LINE, FakeDriver, FakeInstance
from qumran.drivers.process import ProcState, proc_state
from qumran.errors import HypervisorError, InvalidArgument

OWNER = Owner(os.getuid(), os.getgid())
SPEC = VmSpec.model_validate({"name": "fk", "memory": 64, "boot": {"kernel": "/bin/sh"}})
Events = list[tuple[GuestEvent, str]]


@pytest.fixture
def paths() -> Iterator[RunPaths]:
    root = Path(tempfile.mkdtemp(prefix="q-fake-", dir="/tmp"))  # UNIX socket paths are short
    yield RunPaths(root)
    shutil.rmtree(root)


class Console:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, paths: RunPaths) -> Console:
        return cls(*await asyncio.open_unix_connection(str(paths.console)))

    async def line(self) -> str:
        async with asyncio.timeout(5):
            return (await self.reader.readline()).decode().rstrip("\r\n")

    async def type(self, text: str) -> None:
        self.writer.write(text.encode())
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


async def wait_exit(instance: FakeInstance, timeout: float = 5.0) -> int:
    assert instance.process.popen is not None
    status = await asyncio.to_thread(instance.process.popen.wait, timeout)
    return status


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


Body = Callable[[FakeInstance, Events], Awaitable[None]]


def with_vm(paths: RunPaths, body: Body, driver: FakeDriver | None = None) -> None:
    """Launch a fake VM, run ``body``, and make sure the process is gone afterwards."""

    async def main() -> None:
        events: Events = []
        instance = await (driver or FakeDriver()).launch(
            SPEC, paths, OWNER, lambda e, d: events.append((e, d))
        )
        try:
            await body(instance, events)
        finally:
            await instance.close()
            if instance.process.reap() is None:
                os.kill(instance.pid, signal.SIGKILL)
                await wait_exit(instance)

    asyncio.run(main())


def test_launch_is_fast_and_the_process_is_named_after_the_vm(paths: RunPaths) -> None:
    async def body(instance: FakeInstance, events: Events) -> None:
        assert Path(f"/proc/{instance.pid}/comm").read_text().strip() == "qumran-fk"
        assert paths.pidfile.read_text().split()[0] == str(instance.pid)
        assert instance.process.state() is ProcState.RUNNING

    start = time.monotonic()
    with_vm(paths, body)
    assert time.monotonic() - start < 2.0  # launch itself takes ~70 ms


def test_console_prints_the_ready_line_and_echoes(paths: RunPaths) -> None:
    async def body(instance: FakeInstance, events: Events) -> None:
        console = await Console.open(paths)
        assert await console.line() == READY_LINE
        await console.type("echo hello\n")
        assert await console.line() == "echo hello"
        console.close()

    with_vm(paths, body)
    assert paths.console_log.read_bytes() == f"{READY_LINE}\r\necho hello\n".encode()


def test_no_serial_port_means_no_console_socket(paths: RunPaths) -> None:
    async def main() -> None:
        instance = await FakeDriver().launch(
            SPEC.model_copy(update={"serial": False}), paths, OWNER, lambda e, d: None
        )
        try:
            assert not paths.console.exists() and paths.monitor.is_socket()
            await instance.powerdown()
            assert await wait_exit(instance) == 0
        finally:
            await instance.close()

    asyncio.run(main())


def test_pause_holds_console_input_until_resume(paths: RunPaths) -> None:
    async def body(instance: FakeInstance, events: Events) -> None:
        console = await Console.open(paths)
        await console.line()
        await instance.pause()
        assert await instance.is_paused()
        await console.type("late\n")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await console.reader.readline()
        await instance.resume()
        assert not await instance.is_paused()
        assert await console.line() == "late"
        await until(lambda: len(events) == 2)
        assert events == [(GuestEvent.STOP, ""), (GuestEvent.RESUME, "")]

    with_vm(paths, body)


def test_reset_prints_the_ready_line_again(paths: RunPaths) -> None:
    async def body(instance: FakeInstance, events: Events) -> None:
        console = await Console.open(paths)
        assert await console.line() == READY_LINE
        await instance.reset()
        assert await console.line() == READY_LINE
        assert events == []  # the host's own reset is not a guest event

    with_vm(paths, body)


def test_reboot_request_lets_the_guest_reboot_itself(paths: RunPaths) -> None:
    async def body(instance: FakeInstance, events: Events) -> None:
        console = await Console.open(paths)
        assert await console.line() == READY_LINE
        await instance.request_reboot()
        assert await console.line() == READY_LINE
        await until(lambda: bool(events))
        assert events == [(GuestEvent.RESET, "guest-reset")]

    with_vm(paths, body)


def test_powerdown_exits_0_after_a_shutdown_event(paths: RunPaths) -> None:
    async def body(instance: FakeInstance, events: Events) -> None:
        await instance.powerdown()
        assert await wait_exit(instance) == 0
        await until(lambda: bool(events))
        assert events == [(GuestEvent.SHUTDOWN, "guest-shutdown")]
        assert instance.process.state() is ProcState.GONE
        with pytest.raises(HypervisorError, match="disconnected"):
            await instance.is_paused()

    with_vm(paths, body)
    for path in (paths.console, paths.monitor):  # the daemon's sockets: nobody serves them
        with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))


def test_guest_actions_typed_in_the_console(paths: RunPaths) -> None:
    async def body(instance: FakeInstance, events: Events) -> None:
        console = await Console.open(paths)
        await console.line()
        await console.type("reboot\n")
        await console.line()  # the echo
        assert await console.line() == READY_LINE
        await console.type("poweroff\n")
        assert await wait_exit(instance) == 0
        await until(lambda: len(events) == 2)
        assert events == [
            (GuestEvent.RESET, "guest-reset"),
            (GuestEvent.SHUTDOWN, "guest-shutdown"),
        ]

    with_vm(paths, body)


def test_a_guest_panic_is_a_crash_then_a_shutdown(paths: RunPaths) -> None:
    async def body(instance: FakeInstance, events: Events) -> None:
        await instance.guest_panic()
        assert await wait_exit(instance) == 0
        await until(lambda: len(events) == 2)
        assert [e for e, _ in events] == [GuestEvent.CRASH, GuestEvent.SHUTDOWN]

    with_vm(paths, body)


def test_signals_are_real(paths: RunPaths) -> None:
    async def body(instance: FakeInstance, events: Events) -> None:
        os.kill(instance.pid, signal.SIGSTOP)
        await until(lambda: instance.process.state() is ProcState.STOPPED)
        os.kill(instance.pid, signal.SIGCONT)
        await until(lambda: instance.process.state() is ProcState.RUNNING)
        assert not await instance.is_paused()
        os.kill(instance.pid, signal.SIGKILL)
        assert await wait_exit(instance) == -signal.SIGKILL
        with pytest.raises(HypervisorError):
            await instance.powerdown()

    with_vm(paths, body)


def test_sigterm_exits_0_without_a_guest_event(paths: RunPaths) -> None:
    async def body(instance: FakeInstance, events: Events) -> None:
        os.kill(instance.pid, signal.SIGTERM)
        assert await wait_exit(instance) == 0
        await asyncio.sleep(0.05)
        assert events == []

    with_vm(paths, body)


def test_a_failing_launch_quotes_the_process(paths: RunPaths) -> None:
    driver = FakeDriver()
    driver.fail_next = "could not open disk image /x: Permission denied"

    async def main() -> None:
        with pytest.raises(HypervisorError) as caught:
            await driver.launch(SPEC, paths, OWNER, lambda e, d: None)
        assert caught.value.message == (
            "fakevm failed to start VM fk: fakevm: could not open disk image /x: Permission denied"
        )

    asyncio.run(main())
    assert driver.fail_next is None  # only the next launch fails


def test_check_refuses_missing_files_like_the_qemu_driver(tmp_path: Path) -> None:
    FakeDriver().check(SPEC, OWNER)
    missing = {"name": "m", "memory": 64, "boot": {"kernel": "/bin/sh", "initrd": "/no/initrd"}}
    with pytest.raises(InvalidArgument, match=r"^boot.initrd: /no/initrd cannot be opened by"):
        FakeDriver().check(VmSpec.model_validate(missing), OWNER)
    disk = {**missing, "boot": {"kernel": "/bin/sh"}, "disks": [{"path": str(tmp_path / "d")}]}
    with pytest.raises(InvalidArgument, match=r"^disks\[0\].path: .*/d cannot be opened by"):
        FakeDriver().check(VmSpec.model_validate(disk), OWNER)
    FakeDriver(check_paths=False).check(VmSpec.model_validate(missing), OWNER)


def test_attach_from_a_second_driver(paths: RunPaths) -> None:
    async def body(instance: FakeInstance, events: Events) -> None:
        await instance.close()  # the first daemon goes away; the VM stays
        again: Events = []
        other = await FakeDriver().attach(
            SPEC, paths, instance.pid, lambda e, d: again.append((e, d))
        )
        try:
            assert other.pid == instance.pid and other.process.popen is None
            assert other.process.state() is ProcState.RUNNING
            await other.pause()
            assert await other.is_paused()
            await until(lambda: again == [(GuestEvent.STOP, "")])
        finally:
            await other.close()

    with_vm(paths, body)


def test_attach_refuses_gone_and_foreign_processes(paths: RunPaths) -> None:
    """Only the recorded process itself may answer on the monitor socket (SO_PEERCRED)."""
    impostor = socket.socket(socket.AF_UNIX)
    impostor.bind(str(paths.monitor))
    impostor.listen()
    vm = subprocess.Popen(["sleep", "30"])

    async def main() -> None:
        driver = FakeDriver()
        with pytest.raises(HypervisorError, match=rf"answered by process {os.getpid()} .*not by"):
            await driver.attach(SPEC, paths, vm.pid, lambda e, d: None)
        with pytest.raises(HypervisorError, match="is gone"):
            await driver.attach(SPEC, paths, _dead_pid(), lambda e, d: None)

    try:
        asyncio.run(main())
    finally:
        vm.kill()
        vm.wait()
        impostor.close()


def test_attach_refuses_a_run_directory_others_may_write(paths: RunPaths) -> None:
    paths.root.chmod(0o733)

    async def main() -> None:
        with pytest.raises(HypervisorError, match="not the daemon's alone"):
            await FakeDriver().attach(SPEC, paths, os.getpid(), lambda e, d: None)

    asyncio.run(main())


def test_the_event_loop_sees_no_errors_when_the_process_is_killed(paths: RunPaths) -> None:
    unhandled: list[dict[str, Any]] = []

    async def body(instance: FakeInstance, events: Events) -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unhandled.append(ctx))
        os.kill(instance.pid, signal.SIGKILL)
        await wait_exit(instance)
        await asyncio.sleep(0.1)

    with_vm(paths, body)
    assert unhandled == []


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_a_cancelled_launch_leaves_no_process(paths: RunPaths) -> None:
    """Whatever stops a launch half-way — here the caller's cancellation while the
    monitor session opens — the process it spawned is killed, not left untracked."""

    async def main() -> int:
        task = asyncio.create_task(FakeDriver().launch(SPEC, paths, OWNER, lambda e, d: None))
        while not paths.pidfile.exists():  # spawned: the pid file is written right after
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(paths.pidfile.read_text())

    pid = asyncio.run(main())
    assert proc_state(pid) is ProcState.GONE
