"""Hypervisor processes: spawning them as their owner, and reading their real state.

A VM is a process. Its state is read from the kernel (/proc/PID/stat), never assumed:
``kill -STOP`` shows as paused, ``kill -9`` as gone. Exit is detected with a pidfd,
because a process that outlived the daemon that started it is re-parented to pid 1 and
may linger as a zombie for a while, so ``kill(pid, 0)`` would still say "alive".
"""

from __future__ import annotations

import contextlib
import enum
import os
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Types only: drivers.base loads the definition's models (pydantic), and a starting
    # qumrand reads process states (daemon/early.py) before it needs those.
    from qumran.drivers.base import Owner


class ProcState(enum.Enum):
    RUNNING = "running"  # R, S, D: the kernel schedules it
    STOPPED = "stopped"  # T: SIGSTOP / SIGTSTP
    GONE = "gone"  # Z, X or no such process


def proc_state(pid: int, start_time: int | None = None) -> ProcState:
    """The kernel's view of ``pid``; ``start_time`` guards against pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return ProcState.GONE
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if start_time is not None and int(fields[19]) != start_time:
        return ProcState.GONE
    state = fields[0]
    if state in (b"Z", b"X", b"x"):
        return ProcState.GONE
    if state in (b"T", b"t"):
        return ProcState.STOPPED
    return ProcState.RUNNING


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: start time in clock ticks, unique per pid lifetime."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0.0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


RUN_DIR_VAR = "QUMRAN_RUN_DIR"  # in every hypervisor's environment: whose process it is


def processes_marked(var: str = RUN_DIR_VAR) -> dict[int, tuple[str, int]]:
    """Every live process whose environment has ``var``: pid -> (its value, the uid).

    The environment is set at exec, before the process runs a single instruction of its
    own, so a process the daemon spawned carries it even if the daemon died before it
    could write anything down."""
    prefix = var.encode() + b"="
    found: dict[int, tuple[str, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
            uid = entry.stat().st_uid
        except OSError:
            continue
        for item in environ.split(b"\0"):
            if item.startswith(prefix):
                found[int(entry.name)] = (item[len(prefix) :].decode(errors="replace"), uid)
                break
    return found


class Spawned:
    """A hypervisor process: its pid, and its Popen while this daemon is its parent.

    Holding the Popen keeps :mod:`subprocess` from reaping it behind our back, so
    :meth:`reap` gets the real exit status.
    """

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.popen = popen
        self.start_time = proc_start_time(pid)

    def state(self) -> ProcState:
        return proc_state(self.pid, self.start_time)

    def pidfd(self) -> int:
        """A pidfd for ``pid`` (readable when it exits); raise ProcessLookupError if gone."""
        return os.pidfd_open(self.pid)

    def reap(self, pidfd: int = -1) -> int | None:
        """Exit status if we are the parent and it has exited (negative: killed by signal).

        Without a Popen (a qumrand restarted in place by exec is still the parent of the
        VMs the one before it started), the process is reaped through ``pidfd``, which
        names exactly this process, so a recycled pid can never be waited for instead;
        unreaped, it would stay a zombie until qumrand exits."""
        if self.popen is not None:
            return self.popen.poll()
        if pidfd < 0:
            return None
        try:
            result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return None  # not ours: its parent (or init) reaps it
        if result is None:
            return None
        if result.si_code == os.CLD_EXITED:
            return result.si_status
        return -result.si_status  # killed (or dumped core) by that signal


def spawn(
    argv: Sequence[str],
    owner: Owner,
    output: int,
    *,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> Spawned:
    """Start ``argv`` as ``owner`` in its own session, its output going to fd ``output``.

    Its own session means a signal to the daemon's process group (Ctrl-C on a foreground
    qumrand, or a service manager stopping the daemon) does not reach the VM.
    """
    as_other = owner.uid != os.geteuid()
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
        pass_fds=tuple(pass_fds),
        env=env,
        user=owner.uid if as_other else None,
        group=owner.gid if as_other else None,
        extra_groups=_groups(owner) if as_other else None,
    )
    return Spawned(popen.pid, popen)


def _groups(owner: Owner) -> list[int]:
    """Supplementary groups for a VM process: the owner's login groups (the same rights
    its files were checked with, drivers/checks.py) and the group owning /dev/kvm."""
    from qumran.drivers.asuser import groups_of  # ctypes: loaded when a VM is started

    groups = set(groups_of(owner.uid, owner.gid))
    with contextlib.suppress(OSError):
        groups.add(os.stat("/dev/kvm").st_gid)
    return sorted(groups)
