"""Watching hypervisor processes: the kernel's word on each VM's state.

A pidfd per running VM says the instant its process exits (whoever its parent is now),
and costs nothing until then. SIGSTOP and SIGCONT leave no such trace in a pidfd, but
the kernel tells a process's parent: SIGCHLD comes when a child stops or continues. So
for the VMs this daemon started (its children; also after a restart in place, which
keeps the pid), a SIGCHLD makes the supervisor look at its children's states, and an
idle daemon with only such VMs does not wake at all. A VM that is not our child (its
process outlived an earlier qumrand that was stopped, and a new one re-attached) gets
no SIGCHLD: one timer for all such VMs looks at their states every
:data:`POLL_SECONDS`. Each look reads a ``/proc/PID/stat`` descriptor kept open per VM:
a microsecond or two, and the descriptor stays tied to that one process (once it is
gone, reads fail instead of describing whoever got the pid next). Exit reasons follow
libvirt: ``destroyed`` (we killed it), ``shutdown`` (the guest powered off), ``killed``
(someone else killed it), ``crashed`` (it died on its own with an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from qumran.daemon.domain import Domain, Event, Reason, Running
from qumran.drivers.process import ProcState

log = logging.getLogger(__name__)

# How often the timer looks for SIGSTOP/SIGCONT of VMs that are not our children: well
# within the second users expect. Each firing costs ~0.2 ms of CPU (the event loop's
# wake-up) plus a few us per VM, so only those VMs keep it running.
POLL_SECONDS = 0.5  # SIGSTOP/SIGCONT shown within a second; half the wake-ups of 0.25
# After a SIGCHLD, a second look this much later: a state read in the very instant of
# the notification is looked at again (SIGCHLDs of several children may also merge).
SECOND_LOOK = 0.1

StateChange = Callable[[Domain, Event, Reason, str], None]  # dom, event, reason, detail


@dataclass(eq=False)
class _Watched:
    dom: Domain
    run: Running
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    stat_fd: int = -1  # /proc/PID/stat of this process, or -1: fall back to the path
    child: bool = False  # our child: its stops and continues come as SIGCHLD


class Supervisor:
    """Every running VM's watch: SIGCHLD for our children, one timer for the others
    (running only while some such VM runs)."""

    def __init__(self, changed: StateChange, interval: float = POLL_SECONDS) -> None:
        self._changed = changed
        self.interval = interval
        self._watched: set[_Watched] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._second_look: asyncio.TimerHandle | None = None
        self._sigchld: asyncio.AbstractEventLoop | None = None  # the loop handling SIGCHLD
        self.looks = 0  # process states read (for tests: one timer, not many)
        self.ticks = 0  # firings of the timer (for tests: none for children)

    @property
    def watching(self) -> int:
        return len(self._watched)

    @property
    def polled(self) -> int:
        """VMs the timer looks at: those whose stops no SIGCHLD tells us of."""
        return sum(1 for entry in self._watched if not entry.child)

    async def watch(self, dom: Domain, run: Running) -> None:
        """Follow ``run``'s process until it exits; report each change through the callback."""
        loop = asyncio.get_running_loop()
        fd, parent = _open_stat(run)
        entry = _Watched(dom, run, stat_fd=fd)
        entry.child = parent == os.getpid() and self._on_sigchld(loop)
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
            status = run.process.reap(pidfd)  # before the pidfd closes: it names the process
        finally:
            self._watched.discard(entry)
            if pidfd >= 0:
                loop.remove_reader(pidfd)
                os.close(pidfd)
            if entry.stat_fd >= 0:
                os.close(entry.stat_fd)
        reason, detail = exit_reason(run, status)
        self._changed(dom, Event.STOPPED, reason, detail)

    def _on_sigchld(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Have SIGCHLD make us look at our children; False where it cannot (an event
        loop outside the main thread): those VMs are polled instead."""
        if self._sigchld is loop:
            return True
        try:
            loop.add_signal_handler(signal.SIGCHLD, self._children_changed)
        except (RuntimeError, ValueError):
            return False
        self._sigchld = loop
        return True

    def _children_changed(self) -> None:
        """SIGCHLD: a child stopped, continued or exited. Look at every child VM now, and
        once more a moment later (see :data:`SECOND_LOOK`)."""
        self._look_at(child=True)
        if self._second_look is None and self._sigchld is not None:
            self._second_look = self._sigchld.call_later(SECOND_LOOK, self._look_again)

    def _look_again(self) -> None:
        self._second_look = None
        self._look_at(child=True)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None and self.polled:
            self._timer = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.ticks += 1
        self._look_at(child=False)
        self._arm(asyncio.get_running_loop())

    def _look_at(self, child: bool) -> None:
        for entry in [e for e in self._watched if e.child == child]:
            try:
                self._look(entry)
            except Exception as exc:  # one VM's surprise must not stop every VM's watch
                log.error("vm %s: watching its process failed: %s", entry.dom.name, exc)

    def _look(self, entry: _Watched) -> None:
        self.looks += 1
        state = _state(entry)
        if state is ProcState.GONE:
            # Gone, or a zombie whose parent has not reaped it yet: gone for us.
            entry.exited.set()
            return
        _sync_stop_state(entry.dom, entry.run, state is ProcState.STOPPED, self._changed)

    def close(self) -> None:
        for handle in (self._timer, self._second_look):
            if handle is not None:
                handle.cancel()
        self._timer = self._second_look = None
        if self._sigchld is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                self._sigchld.remove_signal_handler(signal.SIGCHLD)
            self._sigchld = None


def _open_stat(run: Running) -> tuple[int, int]:
    """A descriptor of the process's /proc/PID/stat, checked to be that very process,
    and the process's parent pid; (-1, 0) if neither can be had."""
    try:
        fd = os.open(f"/proc/{run.process.pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1, 0
    try:
        fields = _fields(os.pread(fd, 4096, 0))
        if run.process.start_time is None or int(fields[19]) == run.process.start_time:
            return fd, int(fields[1])
    except (OSError, ValueError, IndexError):
        pass
    os.close(fd)
    return -1, 0


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
