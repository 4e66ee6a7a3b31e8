"""A domain: one defined VM and, while it runs, its hypervisor process.

States, events and reasons use libvirt's names so users and tools feel at home; their
string values are what the store keeps and the API sends. The state shown is the real
process's state: the supervisor (``supervisor.py``) folds what the kernel says (``/proc``,
pidfd) and what the hypervisor says (monitor events) into it.

Every change goes through :data:`TRANSITIONS`, a table of the events each state allows
and the state each leads to (as :mod:`qumran.vmm.vcpu` does for a vCPU). Operations ask
:meth:`Domain.allows` before acting; an event the table refuses afterwards is a bug in
the daemon, logged and not applied (``Manager._changed``).
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qumran.client.schema import VmInfo
from qumran.daemon.store import EventRecord, VmRecord
from qumran.drivers.process import proc_cpu_seconds, proc_rss_bytes
from qumran.errors import Timeout

if TYPE_CHECKING:  # the states alone stay light: a starting qumrand answers with them
    from qumran.config.spec import VmSpec  # (daemon/early.py) before the models load
    from qumran.daemon.console import ConsoleBroker
    from qumran.drivers.base import Instance, RunPaths
    from qumran.drivers.process import Spawned


class State(enum.Enum):
    SHUTOFF = "shutoff"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"  # the guest has been asked to power off and is on its way
    CRASHED = "crashed"  # the guest crashed; its process may still be there (destroy it)


class Event(enum.Enum):
    DEFINED = "defined"
    UNDEFINED = "undefined"
    STARTED = "started"
    REATTACHED = "reattached"  # a restarted daemon found the process still running
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    SHUTDOWN = "shutdown"  # the power button was pressed, or the guest is powering off
    REBOOT_REQUESTED = "reboot-requested"  # Ctrl-Alt-Del sent; the guest reboots itself
    REBOOTED = "rebooted"  # the user's hard reset
    RESET = "reset"  # the guest reset itself
    CRASHED = "crashed"
    STOPPED = "stopped"  # the process is gone


class Reason(enum.Enum):
    UNKNOWN = "unknown"
    DEFINED = "defined"
    UNDEFINED = "undefined"
    BOOTED = "booted"
    AUTOSTART = "autostart"
    USER = "user"
    GUEST = "guest"
    SIGNAL = "signal"  # SIGSTOP / SIGCONT from outside
    CRASHED = "crashed"
    DESTROYED = "destroyed"  # we killed the process
    SHUTDOWN = "shutdown"  # the guest powered off
    KILLED = "killed"  # someone else killed the process
    GONE = "gone"  # the process ended while the daemon was away
    DAEMON_RESTART = "daemon-restart"
    SAVED = "saved"  # its snapshot was written, then the process ended (save, managedsave)
    RESTORED = "restored"  # started from a snapshot

    @classmethod
    def parse(cls, value: str) -> Reason:
        """A reason read back from the store (an unknown one from another version: UNKNOWN)."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


def reason_after_restart(last: EventRecord | None) -> Reason:
    """At daemon start, a shut-off VM keeps the reason of its last event (``killed``
    stays ``killed``); a last event that left it running says nothing sure: unknown."""
    if last is not None and last.state == State.SHUTOFF.value:
        return Reason.parse(last.reason)
    return Reason.UNKNOWN


_S = State
_E = Event
_ANY_PROCESS = (_S.RUNNING, _S.PAUSED, _S.SHUTDOWN, _S.CRASHED)

# (state, event) -> the states it may lead to; one, except where the hypervisor decides.
TRANSITIONS: dict[tuple[State, Event], frozenset[State]] = {
    (_S.SHUTOFF, _E.DEFINED): frozenset({_S.SHUTOFF}),
    (_S.SHUTOFF, _E.UNDEFINED): frozenset({_S.SHUTOFF}),
    (_S.SHUTOFF, _E.STARTED): frozenset({_S.RUNNING}),
    (_S.SHUTOFF, _E.REATTACHED): frozenset({_S.RUNNING, _S.PAUSED}),
    (_S.SHUTOFF, _E.STOPPED): frozenset({_S.SHUTOFF}),  # found gone at a daemon restart
    **{(s, _E.STOPPED): frozenset({_S.SHUTOFF}) for s in _ANY_PROCESS},
    **{(s, _E.CRASHED): frozenset({_S.CRASHED}) for s in _ANY_PROCESS},
    # The hypervisor's word on a power-off wins, whatever we thought the guest was doing.
    **{(s, _E.SHUTDOWN): frozenset({_S.SHUTDOWN}) for s in _ANY_PROCESS},
    # SIGSTOP can come at any time, also on top of the user's pause.
    **{(s, _E.SUSPENDED): frozenset({_S.PAUSED}) for s in _ANY_PROCESS},
    (_S.PAUSED, _E.RESUMED): frozenset({_S.RUNNING}),
    (_S.RUNNING, _E.REBOOT_REQUESTED): frozenset({_S.RUNNING}),
    (_S.PAUSED, _E.REBOOT_REQUESTED): frozenset({_S.PAUSED}),  # the keys wait for resume
    (_S.SHUTDOWN, _E.REBOOT_REQUESTED): frozenset({_S.SHUTDOWN}),
    # A reset boots the guest again; held vCPUs stay held.
    (_S.RUNNING, _E.REBOOTED): frozenset({_S.RUNNING}),
    (_S.PAUSED, _E.REBOOTED): frozenset({_S.PAUSED}),
    (_S.SHUTDOWN, _E.REBOOTED): frozenset({_S.RUNNING}),
    (_S.CRASHED, _E.REBOOTED): frozenset({_S.RUNNING}),
    (_S.RUNNING, _E.RESET): frozenset({_S.RUNNING}),
    (_S.PAUSED, _E.RESET): frozenset({_S.PAUSED}),
    (_S.SHUTDOWN, _E.RESET): frozenset({_S.RUNNING}),  # it rebooted instead of powering off
    (_S.CRASHED, _E.RESET): frozenset({_S.RUNNING}),  # a panic action of "reset"
}


class IllegalTransition(Exception):
    """An event the transition table does not allow in the domain's state: a daemon bug."""


def next_state(state: State, event: Event, wanted: State | None = None) -> State:
    """The state ``event`` leads to from ``state`` (``wanted``, where there is a choice)."""
    targets = TRANSITIONS.get((state, event), frozenset())
    if wanted is None and len(targets) == 1:
        [only] = targets
        return only
    if wanted in targets:
        return wanted
    want = f" to {wanted.value}" if wanted else ""
    raise IllegalTransition(f"event {event.value}{want} is not allowed in state {state.value}")


@dataclass
class Running:
    """What exists only while the hypervisor process is alive."""

    instance: Instance
    process: Spawned
    paths: RunPaths
    console: ConsoleBroker
    started_at: float
    watcher: asyncio.Task[None] | None = None
    exit_reason: Reason | None = None  # set when we ask the process to go (destroy)
    guest_shutdown: bool = False  # the hypervisor reported the guest powered off
    paused_by_user: bool = False
    stopped_by_signal: bool = False
    last_reset: float | None = None  # monotonic time of the reset that began a burst


class Domain:
    def __init__(self, record: VmRecord, spec: VmSpec) -> None:
        self.record = record
        self.spec = spec  # the definition in effect (while it runs: the one it started with)
        self.pending: VmSpec | None = None  # an edit saved while running, for the next start
        self.state = State.SHUTOFF
        self.reason = Reason.UNKNOWN
        self.autostart = record.autostart
        self.run: Running | None = None
        self.lock = asyncio.Lock()  # serialises lifecycle operations on this VM
        self.exited = asyncio.Event()
        self.exited.set()
        self.undefined = False  # set under the lock; an operation queued behind it stops
        self.ssh_host_key: str | None = None  # the public key qumrand gave the guest, if any

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def uuid(self) -> str:
        return self.record.uuid

    @property
    def owner(self) -> int:
        return self.record.owner

    @property
    def active(self) -> bool:
        """A hypervisor process exists (also for a crashed guest whose process stays)."""
        return self.run is not None

    def allows(self, event: Event) -> bool:
        return not self.undefined and bool(TRANSITIONS.get((self.state, event)))

    def apply(self, event: Event, reason: Reason, wanted: State | None = None) -> State:
        """Move through the table; raises :class:`IllegalTransition` and changes nothing."""
        if self.undefined:
            raise IllegalTransition(f"event {event.value} after the VM was undefined")
        self.state = next_state(self.state, event, wanted)
        self.reason = reason
        if event is Event.UNDEFINED:
            self.undefined = True
        return self.state

    def restore_reason(self, last: EventRecord | None) -> None:
        self.reason = reason_after_restart(last)

    def info(self) -> VmInfo:
        run = self.run
        pid = run.process.pid if run else None
        return {
            "name": self.name,
            "uuid": self.uuid,
            "owner": self.owner,
            "state": self.state.value,
            "reason": self.reason.value,
            "hypervisor": self.spec.hypervisor,
            "pid": pid,
            "vcpus": self.spec.vcpus,
            "memory_mib": self.spec.memory,
            "autostart": self.autostart,
            "cpu_time": proc_cpu_seconds(pid) if pid else None,
            "rss_bytes": proc_rss_bytes(pid) if pid else None,
            "started_at": run.started_at if run else None,
            "uptime": time.time() - run.started_at if run else None,
            "definition": self.record.definition,
            "pending_definition": self.record.pending,
            "ssh_host_keys": [self.ssh_host_key] if self.ssh_host_key else [],
        }


async def bounded(aw: Any, dom: Domain, seconds: float = 10.0) -> Any:
    """Await a monitor call; a stopped or hung hypervisor must not hang the daemon."""
    try:
        async with asyncio.timeout(seconds):
            return await aw
    except TimeoutError:
        raise Timeout(
            f"VM {dom.name!r}: the hypervisor did not answer within {seconds:.0f} s"
        ) from None
