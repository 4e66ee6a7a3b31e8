"""Watching hypervisor processes: the kernel's word on each VM's state.

A pidfd per running VM says the instant its process exits (whoever its parent is now),
and costs nothing until then. SIGSTOP and SIGCONT leave no such trace, so one timer for
all VMs looks at each process's state every :data:`POLL_SECONDS`, through a
``/proc/PID/stat`` descriptor kept open per VM: a read of it is a microsecond or two,
and the descriptor stays tied to that one process (once it is gone, reads fail instead
of describing whoever got the pid next). An idle daemon thus wakes once per interval,
not once per VM per interval. Exit reasons follow libvirt: ``destroyed`` (we killed it),
``shutdown`` (the guest powered off), ``killed`` (someone else killed it), ``crashed``
(it died on its own with an error).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from qumran.daemon.domain import Domain, Event, Reason, Running
from qumran.drivers.process import ProcState

log = logging.getLogger(__name__)

# How often the timer looks for SIGSTOP/SIGCONT: well within the second users expect, at
# about 2 us of CPU per VM per look (0.001 % of a CPU per VM at this rate).
POLL_SECONDS = 0.5  # SIGSTOP/SIGCONT shown within a second; half the wake-ups of 0.25

StateChange = Callable[[Domain, Event, Reason, str], None]  # dom, event, reason, detail


@dataclass(eq=False)
class _Watched:
    dom: Domain
    run: Running
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    stat_fd: int = -1  # /proc/PID/stat of this process, or -1: fall back to the path


class Supervisor:
    """Every running VM's watch; one timer, running only while some VM runs."""

    def __init__(self, changed: StateChange, interval: float = POLL_SECONDS) -> None:
        self._changed = changed
        self.interval = interval
        self._watched: set[_Watched] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.looks = 0  # process states read by the timer (for tests: one timer, not many)

    @property
    def watching(self) -> int:
        return len(self._watched)

    async def watch(self, dom: Domain, run: Running) -> None:
        """Follow ``run``'s process until it exits; report each change through the callback."""
        loop = asyncio.get_running_loop()
        entry = _Watched(dom, run, stat_fd=_open_stat(run))
        try:
            pidfd = run.process.pidfd()
        except ProcessLookupError:
            pidfd = -1
            entry.exited.set()
        if pidfd >= 0:
            loop.add_reader(pidfd, entry.exited.set)
        try:
            self._look(entry)  # at once: a re-attached VM may be stopped already
            if not entry.exited.is_set():
                self._watched.add(entry)
                self._arm(loop)
                await entry.exited.wait()
        finally:
            self._watched.discard(entry)
            if pidfd >= 0:
                loop.remove_reader(pidfd)
                os.close(pidfd)
            if entry.stat_fd >= 0:
                os.close(entry.stat_fd)
        status = run.process.reap()
        reason, detail = exit_reason(run, status)
        self._changed(dom, Event.STOPPED, reason, detail)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None and self._watched:
            self._timer = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        for entry in list(self._watched):
            try:
                self._look(entry)
            except Exception as exc:  # one VM's surprise must not stop every VM's watch
                log.error("vm %s: watching its process failed: %s", entry.dom.name, exc)
        self._arm(asyncio.get_running_loop())

    def _look(self, entry: _Watched) -> None:
        self.looks += 1
        state = _state(entry)
        if state is ProcState.GONE:
            # Gone, or a zombie whose parent has not reaped it yet: gone for us.
            entry.exited.set()
            return
        _sync_stop_state(entry.dom, entry.run, state is ProcState.STOPPED, self._changed)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _open_stat(run: Running) -> int:
    """A descriptor of the process's /proc/PID/stat, checked to be that very process."""
    try:
        fd = os.open(f"/proc/{run.process.pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        fields = _fields(os.pread(fd, 4096, 0))
        if run.process.start_time is None or int(fields[19]) == run.process.start_time:
            return fd
    except (OSError, ValueError, IndexError):
        pass
    os.close(fd)
    return -1


def _fields(stat: bytes) -> list[bytes]:
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(b")") + 2 :].split(maxsplit=20)


def _state(entry: _Watched) -> ProcState:
    if entry.stat_fd < 0:
        return entry.run.process.state()
    try:
        stat = os.pread(entry.stat_fd, 4096, 0)
    except OSError:  # ESRCH: the process is gone and reaped
        return ProcState.GONE
    code = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
    if code in (b"Z", b"X", b"x", b""):
        return ProcState.GONE
    if code in (b"T", b"t"):
        return ProcState.STOPPED
    return ProcState.RUNNING


def _sync_stop_state(dom: Domain, run: Running, stopped: bool, changed: StateChange) -> None:
    if stopped == run.stopped_by_signal:
        return
    run.stopped_by_signal = stopped
    if stopped:
        changed(dom, Event.SUSPENDED, Reason.SIGNAL, "the process was stopped (SIGSTOP)")
    elif run.paused_by_user:
        pass  # SIGCONT, but the monitor still holds the vCPUs: still paused
    else:
        changed(dom, Event.RESUMED, Reason.SIGNAL, "the process was continued (SIGCONT)")


def exit_reason(run: Running, status: int | None) -> tuple[Reason, str]:
    if run.exit_reason is not None:
        return run.exit_reason, ""
    if run.guest_shutdown or status == 0:
        return Reason.SHUTDOWN, "the guest powered off"
    if status is None:
        return Reason.KILLED, "the process ended while not a child of this daemon"
    if status < 0:
        name = signal.Signals(-status).name
        return Reason.KILLED, f"the process was killed by {name}"
    return Reason.CRASHED, f"the hypervisor exited with status {status}"
