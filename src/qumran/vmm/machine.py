"""A running machine: guest memory and the host side that outlive a reboot, plus the
current boot (VM fd, vCPU threads, devices), which a guest reboot replaces."""

from __future__ import annotations

import enum
import threading
import time
from collections import Counter
from collections.abc import Callable

from qumran.errors import InvalidState
from qumran.kvm import Kvm, Vm
from qumran.vmm.devices import PioBus
from qumran.vmm.memory import GuestMemory
from qumran.vmm.vcpu import VcpuThread

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs resident memory in every VMM process: checkers only
    from typing import Any, Protocol

    from qumran.vmm.coalesced import ConsoleCoalescing

    class ConsoleInput(Protocol):
        def feed(self, data: bytes) -> object: ...

    class PowerButton(Protocol):
        def press_power_button(self) -> None: ...

    class Stateful(Protocol):
        """A device whose state a snapshot saves and a restore puts back."""

        def save_state(self) -> dict[str, Any]: ...

        def load_state(self, state: dict[str, Any]) -> None: ...

    class Peripherals(Protocol):
        """The devices on PCI: stopped after the vCPUs and before the VM fd closes."""

        def status(self) -> list[dict[str, Any]]: ...

        def stop(self) -> None: ...

        def unsnapshottable(self) -> list[str]: ...

        def park(self) -> Callable[[], None]: ...

        def save_state(self) -> dict[str, Any]: ...

        def load_state(self, state: dict[str, Any]) -> None: ...


PAUSE_TIMEOUT = 5.0


class MachineState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"  # the guest was asked to power off and is shutting down
    STOPPED = "stopped"


class Boot:
    """Everything that belongs to one boot of the guest."""

    def __init__(
        self,
        vm: Vm,
        bus: PioBus,
        vcpus: list[VcpuThread],
        serial: ConsoleInput,
        pm: PowerButton | None,
        pci: Peripherals | None = None,
        legacy: dict[str, Stateful] | None = None,
        coalescing: ConsoleCoalescing | None = None,
    ) -> None:
        self.vm = vm
        self.coalescing = coalescing
        self.legacy = legacy or {}
        self.bus = bus
        self.vcpus = vcpus
        self.serial = serial
        self.pm = pm
        self.pci = pci
        self.started = time.monotonic()

    def drain_console(self) -> None:
        """Console bytes KVM still holds queued (coalesced.py) to the console, now."""
        if self.coalescing is not None:
            self.coalescing.drain()

    def exits(self) -> Counter[str]:
        exits: Counter[str] = Counter()
        for v in self.vcpus:
            exits.update(v.exits)
        if self.coalescing is not None and self.coalescing.count:
            exits["coalesced"] = self.coalescing.count
        return exits

    def stop(self) -> None:
        for v in self.vcpus:
            v.stop()
        for v in self.vcpus:
            v.join()
        self.drain_console()  # the ring is in the vCPUs' mappings
        for v in self.vcpus:
            v.vcpu.close()
        if self.pci is not None:
            self.pci.stop()
        self.vm.close()


class MachineConfig:
    __slots__ = ("cmdline", "memory", "name", "origin", "vcpus")

    def __init__(self, name: str, memory: int, vcpus: int, cmdline: str) -> None:
        self.origin: dict[str, Any] = {}  # how it was built, for a snapshot (builder.py)
        self.name = name
        self.memory = memory
        self.vcpus = vcpus
        self.cmdline = cmdline


class Machine:
    """Lifecycle of one VM inside the qumran-vmm process.

    ``booter`` builds a fresh :class:`Boot` (see :mod:`qumran.vmm.builder`); a reboot stops
    the vCPUs, drops the VM fd, zeroes memory and calls it again.
    """

    def __init__(
        self,
        config: MachineConfig,
        kvm: Kvm,
        memory: GuestMemory,
        booter: Callable[[Machine], Boot],
    ) -> None:
        self.config = config
        self.kvm = kvm
        self.memory = memory
        self._booter = booter
        self._lock = threading.Lock()
        self.state = MachineState.STOPPED
        self.boot: Boot | None = None
        self.reboots = 0
        self.created = time.monotonic()
        self._paused_total = 0.0
        self._paused_since: float | None = None
        self._exits_before: Counter[str] = Counter()
        self._closers: list[Callable[[], None]] = []

    # --- lifecycle (main thread) ----------------------------------------------------------

    def start(self, paused: bool = False) -> None:
        self.boot = self._booter(self)
        for v in self.boot.vcpus:
            v.start(paused)
        self.state = MachineState.PAUSED if paused else MachineState.RUNNING

    def reboot(self) -> None:
        """A new boot in the same process; a paused machine comes back paused, with its
        vCPUs held before their first instruction."""
        was_paused = self.state is MachineState.PAUSED
        self._teardown()
        self.memory.discard()
        self.reboots += 1
        self.start(paused=was_paused)

    def shutdown_now(self) -> None:
        """Stop every vCPU and release the VM (memory stays until :meth:`close`)."""
        self._teardown()
        self.state = MachineState.STOPPED

    def on_close(self, close: Callable[[], None]) -> None:
        """Release something the machine owns (an open kernel file...) in :meth:`close`."""
        self._closers.append(close)

    def close(self) -> None:
        self.shutdown_now()
        self.memory.close()
        self.kvm.close()
        for close in reversed(self._closers):
            close()
        self._closers.clear()

    def _teardown(self) -> None:
        if self.boot is not None:
            boot, self.boot = self.boot, None
            boot.stop()
            self._exits_before.update(boot.exits())

    # --- control requests -------------------------------------------------------------------

    def pause(self) -> None:
        with self._lock:
            boot = self._require_boot()
            if self.state is MachineState.PAUSED:
                return
            for v in boot.vcpus:
                v.pause()
            for v in boot.vcpus:
                if not v.wait_held(PAUSE_TIMEOUT):
                    raise InvalidState(f"vCPU {v.vcpu.id} did not stop within {PAUSE_TIMEOUT}s")
            self.state = MachineState.PAUSED
            self._paused_since = time.monotonic()

    def resume(self) -> None:
        with self._lock:
            boot = self._require_boot()
            if self.state is not MachineState.PAUSED:
                return
            for v in boot.vcpus:
                v.resume()
            self.state = MachineState.RUNNING
            if self._paused_since is not None:
                self._paused_total += time.monotonic() - self._paused_since
                self._paused_since = None

    def crash_dump(self) -> list[str]:
        """Every vCPU's registers and last exits (crashdump.py), the vCPUs held first:
        registers can be read only outside KVM_RUN. Nothing resumes them."""
        from qumran.vmm.crashdump import dump

        boot = self.boot
        if boot is None:
            return []
        for v in boot.vcpus:
            v.pause()
        for v in boot.vcpus:
            v.wait_held(PAUSE_TIMEOUT)
        return dump(boot.vcpus)

    def snapshot(self, path: str | int) -> dict[str, Any]:
        """Pause, write the guest to ``path`` (a path, or a file open for writing; see
        :mod:`qumran.vmm.snapshot`), and run again if it was running."""
        from qumran.vmm.snapshot.save import take_snapshot

        return take_snapshot(self, self._require_boot(), path)

    def power_button(self) -> None:
        boot = self._require_boot()
        if boot.pm is None:
            raise InvalidState("this machine has no ACPI power button")
        if self.state is MachineState.PAUSED:
            raise InvalidState("the guest is paused; resume it before asking it to shut down")
        boot.pm.press_power_button()
        self.state = MachineState.SHUTDOWN

    def reset(self) -> None:
        """The reset button: a new boot now, whatever the guest is doing (main thread)."""
        self._require_boot()
        self.reboot()

    def feed_console(self, data: bytes) -> None:
        if self.boot is not None:
            self.boot.serial.feed(data)

    def _require_boot(self) -> Boot:
        if self.boot is None:
            raise InvalidState("the guest is not running")
        return self.boot

    # --- reporting ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "state": self.state.value,
            "vcpus": self.config.vcpus,
            "memory": self.config.memory,
            "reboots": self.reboots,
            "uptime": round(time.monotonic() - self.created, 3),
            "devices": self.boot.pci.status() if self.boot and self.boot.pci else [],
        }

    def stats(self) -> dict[str, Any]:
        boot = self.boot
        vcpus = boot.vcpus if boot is not None else []
        exits = Counter(self._exits_before)
        if boot is not None:
            exits.update(boot.exits())
        paused = self._paused_total
        if self._paused_since is not None:
            paused += time.monotonic() - self._paused_since
        uptime = time.monotonic() - self.created
        return {
            "uptime": round(uptime, 3),
            "run_time": round(uptime - paused, 3),
            "boot_time": round(time.monotonic() - boot.started, 3) if boot else 0.0,
            "exits": dict(exits),
            "vcpus": [
                {
                    "id": v.vcpu.id,
                    "state": v.state.value,
                    "exits": dict(v.exits),
                    "cpu_time": round(v.cpu_seconds(), 3),
                }
                for v in vcpus
            ],
        }
