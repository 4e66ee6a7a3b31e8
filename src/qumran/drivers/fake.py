"""The fake driver: real stand-in VM processes (:mod:`qumran.drivers.fakevm`), no hypervisor.

For the daemon's tests. Each VM is a real process, so the process-level truths the daemon
relies on (pids, ``kill -9``, ``kill -STOP``/``-CONT``, exit status, re-parenting after a
daemon restart) are real; only the guest is pretend. The process starts in well under a
second, serves a console socket that prints ``FAKE-VM READY`` and echoes input, and a
JSON-lines monitor; see :mod:`qumran.drivers.fakevm` for the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
from typing import Any

from qumran.config.spec import VmSpec
from qumran.drivers.base import (
    Driver,
    EventSink,
    GuestEvent,
    HostInfo,
    Instance,
    Owner,
    RunPaths,
)
from qumran.drivers.checks import check_files
from qumran.drivers.process import ProcState, Spawned, spawn
from qumran.drivers.startup import (
    ProcessExited,
    cmdline_mentions,
    file_size,
    kill,
    log_tail,
    remove_stale,
    wait_for_socket,
)
from qumran.errors import HypervisorError, Timeout

log = logging.getLogger(__name__)

READY_LINE = "FAKE-VM READY"  # what qumran.drivers.fakevm prints at boot
START_TIMEOUT = 10.0
COMMAND_TIMEOUT = 5.0
_EVENTS = {event.value: event for event in GuestEvent}


class FakeDriver(Driver):
    """Launches :mod:`qumran.drivers.fakevm` processes.

    :meth:`check` refuses missing boot and disk files, as the QEMU driver does (a test can
    point ``boot.kernel`` at any existing file, such as /bin/sh); ``check_paths=False``
    accepts any path. Set ``fail_next`` to make the next launched process fail with that
    message, as a hypervisor refusing a definition would.
    """

    name = "fake"

    def __init__(
        self,
        *,
        check_paths: bool = True,
        powerdown_delay: float = 0.1,
        python: str = sys.executable,
    ) -> None:
        self.check_paths = check_paths
        self.powerdown_delay = powerdown_delay
        self.python = python
        self.fail_next: str | None = None

    def host_info(self) -> HostInfo:
        return HostInfo(self.name, "none", "the fake driver runs stand-in processes", "0")

    def check(self, spec: VmSpec, owner: Owner) -> None:
        if not self.check_paths:
            return
        check_files(spec, owner)

    def argv(self, spec: VmSpec, paths: RunPaths) -> list[str]:
        argv = [
            self.python, "-m", "qumran.drivers.fakevm",
            "--name", spec.name,
            "--console-log", str(paths.console_log),
            "--monitor", str(paths.monitor),
            "--pidfile", str(paths.pidfile),
            "--powerdown-delay", str(self.powerdown_delay),
        ]  # fmt: skip
        if spec.serial:  # as with QEMU, no serial port means no console socket
            argv += ["--console", str(paths.console)]
        if self.fail_next is not None:
            argv += ["--fail", self.fail_next]
            self.fail_next = None
        return argv

    async def launch(
        self, spec: VmSpec, paths: RunPaths, owner: Owner, events: EventSink
    ) -> FakeInstance:
        self.check(spec, owner)
        argv = self.argv(spec, paths)
        remove_stale((paths.monitor, paths.console, paths.pidfile))
        offset = file_size(paths.log)
        process = spawn(argv, owner, paths.log)
        monitor = FakeMonitor(spec.name, events)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await monitor.connect(await wait_for_socket(process, paths.monitor))
        except TimeoutError:
            await kill(process)
            raise Timeout(
                f"fake VM {spec.name} did not start within {START_TIMEOUT:.0f} s"
            ) from None
        except BaseException as exc:
            await kill(process)
            if isinstance(exc, ProcessExited | OSError):
                output = log_tail(paths.log, offset) or str(exc)
                raise HypervisorError(f"fake VM {spec.name} failed to start: {output}") from exc
            raise
        return FakeInstance(process, paths, monitor)

    async def attach(
        self, spec: VmSpec, paths: RunPaths, pid: int, events: EventSink
    ) -> FakeInstance:
        process = Spawned(pid)
        if process.state() is ProcState.GONE:
            raise HypervisorError(f"the process {pid} of fake VM {spec.name} is gone")
        if not cmdline_mentions(pid, str(paths.monitor)):
            raise HypervisorError(f"process {pid} is not the fake VM {spec.name}")
        monitor = FakeMonitor(spec.name, events)
        try:
            await monitor.connect(str(paths.monitor))
        except OSError as exc:
            raise HypervisorError(
                f"cannot reach the monitor of fake VM {spec.name}: {exc}"
            ) from exc
        return FakeInstance(process, paths, monitor)


class FakeMonitor:
    """The client side of fakevm's JSON-lines monitor: one command at a time, events to
    the sink. A lost connection ends the reader quietly."""

    def __init__(self, vm_name: str, sink: EventSink) -> None:
        self.vm_name = vm_name
        self._sink = sink
        self._writer: asyncio.StreamWriter | None = None
        self._replies: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._reader_task: asyncio.Task[None] | None = None
        self._lost = False

    async def connect(self, address: str | socket.socket) -> None:
        if isinstance(address, socket.socket):
            reader, self._writer = await asyncio.open_unix_connection(sock=address)
        else:
            reader, self._writer = await asyncio.open_unix_connection(address)
        self._reader_task = asyncio.create_task(
            self._read(reader), name=f"fake-monitor-{self.vm_name}"
        )

    async def execute(self, command: str) -> Any:
        async with self._lock:
            if self._lost or self._writer is None or self._writer.is_closing():
                raise self._disconnected()
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    self._writer.write(json.dumps({"execute": command}).encode() + b"\n")
                    await self._writer.drain()
                    reply = await self._replies.get()
            except TimeoutError:
                raise Timeout(f"fake VM {self.vm_name} did not answer {command}") from None
            except OSError as exc:
                raise self._disconnected() from exc
        if reply is None:
            raise self._disconnected()
        if "error" in reply:
            raise HypervisorError(f"fake VM {self.vm_name} refused {command}: {reply['error']}")
        return reply.get("return")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if "event" in message:
                    self._dispatch(message)
                else:
                    self._replies.put_nowait(message)
        except (OSError, ValueError) as exc:
            log.debug("fake VM %s: monitor closed: %r", self.vm_name, exc)
        finally:
            self._lost = True
            self._replies.put_nowait(None)  # wakes a caller waiting for a reply

    def _disconnected(self) -> HypervisorError:
        return HypervisorError(
            f"the monitor of fake VM {self.vm_name} is disconnected (has the process exited?)"
        )

    def _dispatch(self, message: dict[str, Any]) -> None:
        event = _EVENTS.get(str(message["event"]))
        if event is None:  # e.g. host-shutdown: the daemon's own doing
            return
        try:
            self._sink(event, str(message.get("detail", "")))
        except Exception:
            log.exception("fake VM %s: the event sink failed", self.vm_name)

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None


class FakeInstance(Instance):
    """A fakevm process. ``process`` gives the daemon its pid, real state and exit status."""

    def __init__(self, process: Spawned, paths: RunPaths, monitor: FakeMonitor) -> None:
        super().__init__(process, paths)
        self.monitor = monitor

    async def powerdown(self) -> None:
        await self.monitor.execute("powerdown")

    async def reset(self) -> None:
        await self.monitor.execute("reset")

    async def request_reboot(self) -> None:
        await self.monitor.execute("ctrl-alt-del")

    async def pause(self) -> None:
        await self.monitor.execute("stop")

    async def resume(self) -> None:
        await self.monitor.execute("cont")

    async def is_paused(self) -> bool:
        reply = await self.monitor.execute("query-status")
        return isinstance(reply, dict) and reply.get("status") == "paused"

    async def close(self) -> None:
        await self.monitor.close()

    # What the guest can do on its own, for tests of the daemon's event handling.
    async def guest_poweroff(self) -> None:
        await self.monitor.execute("guest-poweroff")

    async def guest_reboot(self) -> None:
        await self.monitor.execute("guest-reboot")

    async def guest_panic(self) -> None:
        await self.monitor.execute("guest-panic")


__all__ = ["READY_LINE", "FakeDriver", "FakeInstance"]
