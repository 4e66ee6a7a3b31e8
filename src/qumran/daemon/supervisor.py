"""Watching hypervisor processes: the kernel's word on each VM's state.

One task per running VM. A pidfd says the instant the process exits (whoever its parent
is now); a short poll of /proc/PID/stat catches SIGSTOP and SIGCONT. Exit reasons follow
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

from qumran.daemon.domain import Domain, Event, Reason, Running
from qumran.drivers.process import ProcState

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2

StateChange = Callable[[Domain, Event, Reason, str], None]  # dom, event, reason, detail


async def watch(dom: Domain, run: Running, changed: StateChange) -> None:
    """Follow ``run``'s process until it exits; report each change through ``changed``."""
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    try:
        pidfd = run.process.pidfd()
    except ProcessLookupError:
        pidfd = -1
        exited.set()
    if pidfd >= 0:
        loop.add_reader(pidfd, exited.set)
    try:
        while not exited.is_set():
            _sync_stop_state(dom, run, changed)
            if run.process.state() is ProcState.GONE:
                break  # a zombie whose parent has not reaped it yet: it is gone for us
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await exited.wait()
    finally:
        if pidfd >= 0:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    status = run.process.reap()
    reason, detail = exit_reason(run, status)
    changed(dom, Event.STOPPED, reason, detail)


def _sync_stop_state(dom: Domain, run: Running, changed: StateChange) -> None:
    stopped = run.process.state() is ProcState.STOPPED
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
