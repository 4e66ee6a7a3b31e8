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
    HandoffFds,
    HostInfo,
    Instance,
    Owner,
    RunPaths,
)
from qumran.drivers.checks import check_files
from qumran.drivers.process import Spawned
from qumran.drivers.seed import check_seed
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
    program = "fakevm"
    start_timeout = START_TIMEOUT

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
        check_seed(spec, owner)

    def command(self, spec: VmSpec, fds: HandoffFds) -> list[str]:
        argv = [
            self.python, "-m", "qumran.drivers.fakevm",
            "--name", spec.name,
            "--console-log", f"fd={fds.console_log}",
            "--monitor", f"fd={fds.monitor}",
            "--powerdown-delay", str(self.powerdown_delay),
        ]  # fmt: skip
        if fds.console is not None:  # as with QEMU, no serial port means no console socket
            argv += ["--console", f"fd={fds.console}"]
        if self.fail_next is not None:
            argv += ["--fail", self.fail_next]
            self.fail_next = None
        return argv

    async def open_instance(
        self,
        spec: VmSpec,
        process: Spawned,
        paths: RunPaths,
        monitor: socket.socket,
        events: EventSink,
        *,
        stopped: bool = False,
    ) -> FakeInstance:
        client = FakeMonitor(spec.name, events)
        await client.connect(monitor)
        if not stopped:
            await client.execute("query-status")  # the process is up and answering
        return FakeInstance(process, paths, client)


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
