"""The one interface between the daemon and a hypervisor.

A driver launches one hypervisor process per VM and hands back an :class:`Instance`:
the daemon's grip on that process (its monitor, its console socket, its pid). The
daemon never speaks QMP or ioctls; it speaks this interface. Every driver also supports
:meth:`Driver.attach`, which re-connects to a process started by an earlier daemon.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qumran.config.spec import VmSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qumran.drivers.process import Spawned  # process.py imports this module


@dataclass(frozen=True)
class Owner:
    """The user a VM belongs to and runs as."""

    uid: int
    gid: int


@dataclass(frozen=True)
class RunPaths:
    """Where one VM's runtime files live (a private folder per VM, owned by its owner)."""

    root: Path

    @property
    def monitor(self) -> Path:
        return self.root / "monitor.sock"

    @property
    def console(self) -> Path:
        return self.root / "console.sock"

    @property
    def console_log(self) -> Path:
        return self.root / "console.log"

    @property
    def log(self) -> Path:
        """The hypervisor's own stdout/stderr."""
        return self.root / "hypervisor.log"

    @property
    def pidfile(self) -> Path:
        return self.root / "pid"

    @property
    def vnc(self) -> Path:
        return self.root / "vnc.sock"


class GuestEvent(enum.Enum):
    """What the hypervisor reports about the guest on its own initiative."""

    SHUTDOWN = "shutdown"  # the guest powered off (process is about to exit)
    RESET = "reset"  # the guest rebooted
    STOP = "stop"  # execution paused (by the monitor or an error)
    RESUME = "resume"
    CRASH = "crash"  # guest panic / triple fault / internal error


EventSink = Callable[[GuestEvent, str], None]  # (event, detail)


@dataclass(frozen=True)
class HostInfo:
    driver: str
    accelerator: str  # "kvm" or "tcg" (QEMU driver), "kvm" (native)
    reason: str  # why that accelerator, in one sentence
    version: str
    available: bool = True


class Instance(ABC):
    """A running hypervisor process, as the daemon sees it."""

    def __init__(self, process: Spawned, paths: RunPaths) -> None:
        self.process = process  # the hypervisor process: pid, real state, exit status
        self.paths = paths

    @property
    def pid(self) -> int:
        return self.process.pid

    @abstractmethod
    async def powerdown(self) -> None:
        """Ask the guest to shut down (ACPI power button)."""

    @abstractmethod
    async def reset(self) -> None:
        """Hard reset (the reset button)."""

    @abstractmethod
    async def request_reboot(self) -> None:
        """Ask the guest to reboot (Ctrl-Alt-Del): its OS decides how, or whether."""

    @abstractmethod
    async def pause(self) -> None: ...

    @abstractmethod
    async def resume(self) -> None: ...

    @abstractmethod
    async def is_paused(self) -> bool:
        """What the monitor says (a SIGSTOPped process is the daemon's business)."""

    @abstractmethod
    async def close(self) -> None:
        """Drop the monitor connection; leave the process running."""

    async def block_io(self) -> tuple[int, int] | None:
        """Bytes read and written by the guest's disks, if the hypervisor counts them."""
        return None


class Driver(ABC):
    """Launches and re-attaches hypervisor processes of one kind."""

    name: str

    @abstractmethod
    def host_info(self) -> HostInfo: ...

    @abstractmethod
    def check(self, spec: VmSpec, owner: Owner) -> None:
        """Raise InvalidArgument if this driver cannot run ``spec`` for ``owner`` (before
        any launch); files are checked with the owner's rights (drivers/checks.py)."""

    @abstractmethod
    async def launch(
        self, spec: VmSpec, paths: RunPaths, owner: Owner, events: EventSink
    ) -> Instance:
        """Start the process and connect its monitor; raise HypervisorError with the
        hypervisor's own error text if it fails. ``paths.root`` exists and is owned by
        ``owner``. The console socket is ready when this returns."""

    @abstractmethod
    async def attach(self, spec: VmSpec, paths: RunPaths, pid: int, events: EventSink) -> Instance:
        """Re-connect to a process an earlier daemon launched."""
