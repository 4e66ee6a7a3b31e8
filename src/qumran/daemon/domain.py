"""A domain: one defined VM and, while it runs, its hypervisor process.

States and reasons use libvirt's names so users and tools feel at home. The state shown
is the real process's state: the supervisor (``watch.py``) folds what the kernel says
(``/proc``, pidfd) and what the hypervisor says (monitor events) into it.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass

from qumran.client.schema import VmInfo
from qumran.config.spec import VmSpec
from qumran.daemon.console import ConsoleBroker
from qumran.daemon.store import VmRecord
from qumran.drivers.base import Instance, RunPaths
from qumran.drivers.process import Spawned, proc_cpu_seconds, proc_rss_bytes


class State(enum.Enum):
    SHUTOFF = "shutoff"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"  # the guest has been asked to power off and is on its way
    CRASHED = "crashed"


ACTIVE = frozenset({State.RUNNING, State.PAUSED, State.SHUTDOWN})


@dataclass
class Running:
    """What exists only while the hypervisor process is alive."""

    instance: Instance
    process: Spawned
    paths: RunPaths
    console: ConsoleBroker
    started_at: float
    watcher: asyncio.Task[None] | None = None
    exit_reason: str | None = None  # set when we ask the process to go (destroy)
    guest_shutdown: bool = False  # the hypervisor reported the guest powered off
    paused_by_user: bool = False
    stopped_by_signal: bool = False


class Domain:
    def __init__(self, record: VmRecord, spec: VmSpec) -> None:
        self.record = record
        self.spec = spec
        self.state = State.SHUTOFF
        self.reason = "unknown"
        self.autostart = record.autostart
        self.run: Running | None = None
        self.lock = asyncio.Lock()  # serialises lifecycle operations on this VM
        self.exited = asyncio.Event()
        self.exited.set()

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
        return self.state in ACTIVE

    def info(self) -> VmInfo:
        run = self.run
        pid = run.process.pid if run else None
        return {
            "name": self.name,
            "uuid": self.uuid,
            "owner": self.owner,
            "state": self.state.value,
            "reason": self.reason,
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
        }
