"""The one interface between the daemon and a hypervisor.

A driver launches one hypervisor process per VM and hands back an :class:`Instance`:
the daemon's grip on that process (its monitor, its console socket, its pid). The
daemon never speaks QMP or ioctls; it speaks this interface. Every driver also supports
:meth:`Driver.attach`, which re-connects to a process started by an earlier daemon.

Launch and attach are one pipeline for every driver (:mod:`qumran.drivers.startup`); a
driver supplies only its command line (:meth:`Driver.command`) and how to speak to its
monitor (:meth:`Driver.open_instance`).
"""

from __future__ import annotations

import enum
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qumran.config.spec import VmSpec
from qumran.errors import InvalidState

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
    """Where one VM's runtime files live: a folder per VM that only the daemon may write
    (:mod:`qumran.drivers.rundir`)."""

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
    def seed(self) -> Path:
        """The cloud-init seed image, written by the daemon at each start."""
        return self.root / "seed.iso"

    @property
    def pidfile(self) -> Path:
        """The hypervisor's pid, written by the daemon."""
        return self.root / "pid"


@dataclass(frozen=True)
class NetFds:
    """One network NIC's open files, made by the daemon (docs/networks.md): its TAP, and
    /dev/vhost-net when the daemon could open it (None: frames go through the hypervisor)."""

    tap: int
    vhost: int | None = None

    @property
    def all(self) -> tuple[int, ...]:
        return (self.tap,) if self.vhost is None else (self.tap, self.vhost)


@dataclass(frozen=True)
class HandoffFds:
    """The fd numbers a new hypervisor process inherits from the daemon."""

    monitor: int  # a listening UNIX socket
    console: int | None  # a listening UNIX socket; None without a serial console
    console_log: int  # a file open for appending: every byte of serial output
    seed: int | None = None  # a cloud-init seed image open read-only; None without one
    # One per network NIC (``nics[].network``), in the order of those NICs in the spec.
    nets: tuple[NetFds, ...] = ()
    # A snapshot to resume instead of booting (save/restore, docs/vmm.md), open read-only.
    restore: int | None = None


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

    async def save(self, target: str | int) -> None:
        """Write the guest's snapshot to ``target`` (a path the hypervisor opens as the
        VM's owner, or a file open for writing); the guest is left paused."""
        raise InvalidState("this hypervisor cannot save a VM")

    async def open_display(self) -> socket.socket:
        """A new connection to the guest's graphical display (RFB), for a viewer."""
        raise InvalidState("this VM has no graphical display (graphics: true, QEMU driver)")


class Driver(ABC):
    """Launches and re-attaches hypervisor processes of one kind."""

    name: str
    program: str  # how messages name the hypervisor: "QEMU", "qumran-vmm", ...
    start_timeout = 30.0  # seconds from exec to a monitor session
    snapshots = False  # save, restore and managedsave (Instance.save, HandoffFds.restore)

    @abstractmethod
    def host_info(self) -> HostInfo: ...

    @abstractmethod
    def check(self, spec: VmSpec, owner: Owner) -> None:
        """Raise InvalidArgument if this driver cannot run ``spec`` for ``owner`` (before
        any launch); files are checked with the owner's rights (drivers/checks.py)."""

    @abstractmethod
    def command(self, spec: VmSpec, fds: HandoffFds) -> list[str]:
        """The argv that runs ``spec``; the process finds its monitor and console sockets
        and its console log as the open fds ``fds``."""

    @abstractmethod
    async def open_instance(
        self,
        spec: VmSpec,
        process: Spawned,
        paths: RunPaths,
        monitor: socket.socket,
        events: EventSink,
        *,
        stopped: bool = False,
    ) -> Instance:
        """Speak to the process's monitor over ``monitor`` (connected) and wrap it up.
        ``stopped``: the process is SIGSTOPped and will not answer before SIGCONT."""

    async def launch(
        self,
        spec: VmSpec,
        paths: RunPaths,
        owner: Owner,
        events: EventSink,
        *,
        seed: bytes | None = None,
        nets: tuple[NetFds, ...] = (),
        restore: int | None = None,
    ) -> Instance:
        """Start the process as ``owner`` and connect its monitor; raise HypervisorError
        with the hypervisor's own error text if it fails. ``paths.root`` is a fresh run
        directory (:func:`qumran.drivers.rundir.create`). The console socket is listening
        when this returns. ``seed``: the cloud-init seed image the VM gets as a read-only
        disk (:mod:`qumran.drivers.seed`). ``nets``: the network NICs' TAPs (and vhost-net
        fds), one per network NIC; the caller keeps them and closes its copies after.
        ``restore``: a snapshot file, open, to resume (only where :attr:`snapshots`); the
        caller keeps it too."""
        from qumran.drivers.startup import launch

        return await launch(self, spec, paths, owner, events, seed=seed, nets=nets,
                            restore=restore)  # fmt: skip

    async def attach(self, spec: VmSpec, paths: RunPaths, pid: int, events: EventSink) -> Instance:
        """Re-connect to a process an earlier daemon launched, once the kernel vouches
        that ``pid`` itself answers on the run directory's monitor socket."""
        from qumran.drivers.startup import attach

        return await attach(self, spec, paths, pid, events)
