"""One QMP session with one QEMU process, through QEMU's own ``qemu.qmp`` library.

Commands become :class:`~qumran.errors.HypervisorError` or
:class:`~qumran.errors.Timeout` on failure; asynchronous QMP events become
:class:`~qumran.drivers.base.GuestEvent` values handed to the daemon's sink. The process
may die at any moment (``kill -9`` is a supported way to destroy a VM), so a lost
connection only ends the session: nothing raises into the daemon's event loop. The
daemon learns of the exit from the process itself (a pidfd), not from here.

QMP reference: QEMU ``docs/interop/qmp-spec.rst`` and the events in ``qapi/run-state.json``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from typing import Any

from qemu.qmp import ExecInterruptedError, ExecuteError, QMPClient, QMPError, Runstate

from qumran.drivers.base import EventSink, GuestEvent
from qumran.errors import HypervisorError, Timeout

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 10.0  # seconds; a healthy QEMU answers in milliseconds
# query-status values that mean the guest cannot go on (qapi/run-state.json RunState).
CRASHED_STATUSES = frozenset({"internal-error", "guest-panicked"})


def translate(message: Mapping[str, Any]) -> tuple[GuestEvent, str] | None:
    """The GuestEvent for one QMP event message, or None for events the daemon ignores.

    SHUTDOWN and RESET count only when the guest caused them (``guest: true``): a host-side
    quit, signal or system_reset is the daemon's own doing, and already recorded as such.
    """
    name = message.get("event")
    data = message.get("data") or {}
    reason = str(data.get("reason", ""))
    match name:
        case "SHUTDOWN" if data.get("guest") is True:
            return GuestEvent.SHUTDOWN, reason
        case "RESET" if data.get("guest") is True:
            return GuestEvent.RESET, reason
        case "STOP":
            return GuestEvent.STOP, ""
        case "RESUME":
            return GuestEvent.RESUME, ""
        case "GUEST_PANICKED":
            return GuestEvent.CRASH, f"guest panicked (action: {data.get('action', '?')})"
        case _:
            return None


class QmpMonitor:
    """A QMP connection whose events are pumped into an :data:`EventSink`."""

    def __init__(self, vm_name: str, sink: EventSink) -> None:
        self.vm_name = vm_name
        self._sink = sink
        self._qmp = QMPClient(f"qumran-{vm_name}")
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: asyncio.Task[None] | None = None
        self._dc_task: asyncio.Task[None] | None = None
        self._passing = asyncio.Lock()  # one fd in flight: getfd takes the last one sent

    @property
    def connected(self) -> bool:
        return self._qmp.runstate == Runstate.RUNNING

    async def connect(self, address: str | socket.socket) -> None:
        """Open the session (greeting and capabilities negotiation); start the event pump."""
        # A failed connect raises to us, and we report it with QEMU's own words; the
        # library's ERROR lines about the same failure would only repeat it.
        level = self._qmp.logger.level
        self._qmp.logger.setLevel(logging.CRITICAL)
        try:
            await self._qmp.connect(address)
        except QMPError as exc:
            raise HypervisorError(
                f"cannot open the QMP monitor of VM {self.vm_name}: {exc}"
            ) from exc
        finally:
            self._qmp.logger.setLevel(level)
        self._start(self._pump(), "events")
        self._start(self._watch(), "watch")

    def connect_later(self, address: str | socket.socket) -> None:
        """Connect in the background; commands wait for it. For a SIGSTOPped process,
        whose kernel accepts the connection but whose QEMU sends no greeting until SIGCONT."""
        self._session = asyncio.create_task(self.connect(address), name=f"qmp-{self.vm_name}")
        self._session.add_done_callback(_log_failure)

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        """Run one command and return its ``return`` value."""
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                if self._session is not None:
                    await asyncio.shield(self._session)
                return await self._qmp.execute(command, arguments)
        except TimeoutError as exc:
            raise Timeout(
                f"QEMU of VM {self.vm_name} did not answer {command} within "
                f"{COMMAND_TIMEOUT:.0f} s (is the process stopped?)"
            ) from exc
        except ExecuteError as exc:
            raise HypervisorError(f"QEMU refused {command} for VM {self.vm_name}: {exc}") from exc
        except (ExecInterruptedError, QMPError, OSError, EOFError) as exc:
            raise HypervisorError(
                f"the monitor of VM {self.vm_name} is disconnected (has the process exited?)"
            ) from exc

    async def pass_fd(self, fd: int, name: str) -> None:
        """Give QEMU an open file descriptor under ``name`` (SCM_RIGHTS, then getfd)."""
        async with self._passing:
            try:
                if self._session is not None:
                    await asyncio.shield(self._session)
                self._qmp.send_fd_scm(fd)
            except (QMPError, OSError, AssertionError) as exc:
                raise HypervisorError(
                    f"cannot pass a file descriptor to the QEMU of VM {self.vm_name}: {exc}"
                ) from exc
            await self.execute("getfd", {"fdname": name})

    async def status(self) -> str:
        """QEMU's run state: "running", "paused", "internal-error", ... (query-status)."""
        reply = await self.execute("query-status")
        status = reply.get("status") if isinstance(reply, dict) else None
        if not isinstance(status, str):
            raise HypervisorError(f"unexpected query-status reply from VM {self.vm_name}: {reply}")
        return status

    async def close(self) -> None:
        """End the session and its tasks; the QEMU process is not affected."""
        for task in [*self._tasks, *([self._session] if self._session else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._session = None
        await self._disconnect()

    def _start(self, coro: Any, what: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"qmp-{what}-{self.vm_name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    async def _pump(self) -> None:
        async for message in self._qmp.events:
            event = translate(message)
            log.debug("VM %s: QMP event %s", self.vm_name, message.get("event"))
            if event is None:
                continue
            self._emit(*event)
            if event[0] is GuestEvent.STOP:
                await self._check_crash()

    async def _check_crash(self) -> None:
        # STOP does not say why; an emulation failure or a panic with action=pause shows
        # only in the run state.
        try:
            status = await self.status()
        except (HypervisorError, Timeout):
            return
        if status in CRASHED_STATUSES:
            self._emit(GuestEvent.CRASH, status)

    def _emit(self, event: GuestEvent, detail: str) -> None:
        try:
            self._sink(event, detail)
        except Exception:
            log.exception("VM %s: the event sink failed on %s", self.vm_name, event.value)

    async def _watch(self) -> None:
        # When QEMU hangs up, qemu.qmp parks in DISCONNECTING until disconnect() collects
        # the reader's EOFError; do that here so the session ends quietly.
        while self._qmp.runstate == Runstate.RUNNING:
            await self._qmp.runstate_changed()
        log.info("VM %s: the QMP connection closed", self.vm_name)
        await self._disconnect()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()

    async def _disconnect(self) -> None:
        # One disconnect, shared by whoever asks (the watcher when QEMU hangs up, close()
        # when the daemon lets go), and shielded: if an asker is cancelled half-way, the
        # library's internal gather would otherwise be left with an unretrieved EOFError.
        if self._dc_task is None or (self._dc_task.done() and self.connected):
            self._dc_task = asyncio.create_task(self._disconnect_once())
        await asyncio.shield(self._dc_task)

    async def _disconnect_once(self) -> None:
        try:
            await self._qmp.disconnect()
        except (QMPError, OSError, EOFError) as exc:
            log.debug("VM %s: QMP disconnect: %r", self.vm_name, exc)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("%s failed: %s", task.get_name(), exc)
        log.debug("%s failed", task.get_name(), exc_info=exc)
