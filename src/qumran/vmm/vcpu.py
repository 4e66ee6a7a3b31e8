"""One thread per vCPU, with an explicit run state.

``pause`` kicks the thread out of KVM_RUN (``immediate_exit`` plus a signal, so there is
no window in which the kick is lost) and holds it; ``resume`` releases it; ``stop`` makes
it return. Exits are typed values (:mod:`qumran.kvm.exits`) dispatched with ``match``.

A paused vCPU is held only after a KVM_RUN that returned ``Interrupted``. After a port or
MMIO exit, KVM finishes the instruction in the next KVM_RUN (an IN's value reaches RAX,
RIP moves past the IN or OUT; api.rst: "the corresponding operations are complete (and
guest state is consistent) only after userspace has re-entered the kernel with
KVM_RUN"). Held before that, the vCPU's registers still point at an instruction whose
device side effect has happened, and a snapshot taken then makes the restored guest do
it again: reading the UART's IIR a second time, after the first read acknowledged the
THRE interrupt, the guest's serial driver finds nothing pending and waits for an
interrupt that never comes. So a pause goes through KVM_RUN once more, with the kick's
``immediate_exit`` set: KVM completes the exit and returns at once, no guest
instruction run.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import os
import signal
import threading
import time
from collections.abc import Callable

from qumran.kvm import KvmError, Vcpu
from qumran.kvm.constants import InternalError, SystemEvent
from qumran.kvm.exits import (
    FailEntry,
    Halted,
    InternalErrorExit,
    Interrupted,
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    SystemEventExit,
    TripleFault,
    Unhandled,
)
from qumran.vmm import confine
from qumran.vmm.devices import PioBus
from qumran.vmm.events import EventSink, GuestEvent, GuestEventNotice
from qumran.vmm.log import get_logger
from qumran.vmm.proctitle import set_thread_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class MmioHandler(Protocol):
        """Guest-physical MMIO outside RAM (the PCI BARs)."""

        def mmio_read(self, addr: int, length: int) -> bytes: ...

        def mmio_write(self, addr: int, data: bytes) -> None: ...


log = get_logger(__name__)

KICK_SIGNAL = signal.SIGUSR1
# Process-wide signals are for the main thread; a vCPU thread only takes the kick.
RECENT_EXITS = 24
BLOCKED_IN_VCPU = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE}


def install_kick_handler() -> None:
    """The kick needs a handler (the default action of SIGUSR1 would kill the process);
    main thread only. An ignored signal would not interrupt KVM_RUN."""
    signal.signal(KICK_SIGNAL, lambda _signum, _frame: None)


class _NoMmio:
    def mmio_read(self, addr: int, length: int) -> bytes:
        return b"\xff" * length  # nothing is mapped there

    def mmio_write(self, addr: int, data: bytes) -> None:
        return None


class RunState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"


_ALLOWED = {
    RunState.CREATED: {RunState.RUNNING, RunState.PAUSED, RunState.STOPPING},
    RunState.RUNNING: {RunState.PAUSED, RunState.STOPPING},
    RunState.PAUSED: {RunState.RUNNING, RunState.STOPPING},
    RunState.STOPPING: {RunState.STOPPED},
    RunState.STOPPED: set(),
}


class VcpuThread:
    """Runs one vCPU on its own thread and handles its exits."""

    def __init__(
        self,
        vcpu: Vcpu,
        bus: PioBus,
        events: EventSink,
        mmio: MmioHandler | None = None,
        drain: Callable[[], None] | None = None,
    ) -> None:
        self.vcpu = vcpu
        self._drain = drain  # writes KVM queued (coalesced.py): handled before each exit
        self._bus = bus
        self._mmio: MmioHandler = mmio if mmio is not None else _NoMmio()
        self._events = events
        self._cond = threading.Condition()
        self._state = RunState.CREATED
        self._held = False  # the thread is parked in _wait_runnable
        self._thread = threading.Thread(target=self._main, name=f"vcpu{vcpu.id}", daemon=True)
        self.exits: collections.Counter[str] = collections.Counter()
        # The last exits, for the crash dump (crashdump.py): the exit objects themselves,
        # so that the hot path pays one append.
        self.recent: collections.deque[object] = collections.deque(maxlen=RECENT_EXITS)
        self.native_id: int | None = None

    @property
    def state(self) -> RunState:
        return self._state

    def _move(self, new: RunState) -> bool:
        """Guarded transition (caller holds the lock); False if ``new`` is not reachable."""
        if new not in _ALLOWED[self._state]:
            return False
        self._state = new
        self._cond.notify_all()
        return True

    # --- control, from other threads ------------------------------------------------------

    def start(self, paused: bool = False) -> None:
        with self._cond:
            if not self._move(RunState.PAUSED if paused else RunState.RUNNING):
                raise RuntimeError(f"vCPU {self.vcpu.id}: cannot start from {self._state}")
        self._thread.start()

    def pause(self) -> None:
        with self._cond:
            if not self._move(RunState.PAUSED):
                return
        self._kick()

    def wait_held(self, timeout: float = 5.0) -> bool:
        """Wait until the thread is out of KVM_RUN and parked (after ``pause``)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._held or self._state is RunState.STOPPED, timeout
            )

    def resume(self) -> None:
        with self._cond:
            if self._state is RunState.PAUSED:
                self._move(RunState.RUNNING)

    def stop(self) -> None:
        with self._cond:
            if not self._move(RunState.STOPPING):
                return
        self._kick()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _kick(self) -> None:
        self.vcpu.set_immediate_exit(True)
        ident = self._thread.ident
        if ident is not None and self._thread.is_alive():
            with contextlib.suppress(ProcessLookupError):  # it just ended
                signal.pthread_kill(ident, KICK_SIGNAL)

    # --- the thread -----------------------------------------------------------------------

    def _main(self) -> None:
        self.native_id = threading.get_native_id()
        set_thread_name(f"CPU {self.vcpu.id}/KVM")  # what QEMU calls its vCPU threads
        signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_IN_VCPU)
        confine.enter("vcpu")
        try:
            self._loop()
        except KvmError as exc:
            self._report(GuestEvent.CRASH, str(exc))
        except Exception as exc:
            log.debug("vCPU %d failed", self.vcpu.id, exc_info=True)
            self._report(GuestEvent.CRASH, f"internal error: {exc!r}")
        finally:
            with self._cond:
                if self._state is not RunState.STOPPING:
                    self._state = RunState.STOPPING
                self._move(RunState.STOPPED)

    def _wait_runnable(self, settled: bool) -> bool:
        """Park while paused; False once the thread must stop. ``settled``: the last
        KVM_RUN returned ``Interrupted``; until then a pause runs again (see the module's
        docstring)."""
        with self._cond:
            if not settled and self._state is RunState.PAUSED:
                return True
            while self._state is RunState.PAUSED:
                self._held = True
                self._cond.notify_all()
                self._cond.wait()
            self._held = False
            return self._state is RunState.RUNNING

    def _loop(self) -> None:
        vcpu, bus, page, exits = self.vcpu, self._bus, self.vcpu.run_page, self.exits
        mmio, recent, drain = self._mmio, self.recent.append, self._drain
        settled = True  # no exit waits for a KVM_RUN to complete it
        while self._wait_runnable(settled):
            exit_ = vcpu.run()
            recent(exit_)
            if drain is not None:
                drain()
            settled = False
            match exit_:
                case IoOut(port, size, count, data):
                    exits["io"] += 1
                    for i in range(0, size * count, size):
                        bus.write(port, size, int.from_bytes(data[i : i + size], "little"))
                case IoIn(port, size, count, offset):
                    exits["io"] += 1
                    for i in range(offset, offset + size * count, size):
                        page[i : i + size] = bus.read(port, size).to_bytes(size, "little")
                case Interrupted():
                    exits["intr"] += 1
                    vcpu.set_immediate_exit(False)
                    settled = True
                case MmioRead(addr, length):
                    exits["mmio"] += 1
                    vcpu.complete_mmio_read(mmio.mmio_read(addr, length))
                case MmioWrite(addr, data):
                    exits["mmio"] += 1
                    mmio.mmio_write(addr, data)
                case SystemEventExit(type_):
                    exits["system-event"] += 1
                    self._system_event(type_)
                case TripleFault():
                    exits["shutdown"] += 1
                    self._report(GuestEvent.CRASH, self._describe("triple fault"))
                    return
                case InternalErrorExit(suberror, data):
                    exits["internal-error"] += 1
                    self._report(GuestEvent.CRASH, self._internal_error(suberror, data))
                    return
                case FailEntry(reason, cpu):
                    self._report(GuestEvent.CRASH, f"VM entry failed: reason {reason:#x} on {cpu}")
                    return
                case Halted():
                    exits["hlt"] += 1
                    time.sleep(0.001)  # only without an in-kernel LAPIC
                case Unhandled(reason, detail):
                    what = f"unhandled KVM exit reason {reason} (detail {detail:#x})"
                    self._report(GuestEvent.CRASH, self._describe(what))
                    return

    def _system_event(self, type_: int) -> None:
        match type_:
            case SystemEvent.SHUTDOWN:
                self._report(GuestEvent.POWEROFF, "system event: shutdown")
            case SystemEvent.RESET:
                self._report(GuestEvent.REBOOT, "system event: reset")
            case _:
                self._report(GuestEvent.CRASH, f"system event {type_}")

    def _internal_error(self, suberror: int, data: tuple[int, ...]) -> str:
        name = InternalError.name_of(suberror)
        what = f"suberror {name}" if name.isdigit() else name.lower().replace("_", " ")
        words = " ".join(f"{d:#x}" for d in data[:4])
        return self._describe(f"KVM internal error ({what}; {words})")

    def _describe(self, what: str) -> str:
        try:
            regs = self.vcpu.get_regs()
            return f"{what} on vCPU {self.vcpu.id} at rip={regs.rip:#x}"
        except KvmError:
            return f"{what} on vCPU {self.vcpu.id}"

    def _report(self, event: GuestEvent, detail: str) -> None:
        self._events(GuestEventNotice(event, detail, self.vcpu.id))

    def cpu_seconds(self) -> float:
        """User + system CPU time of this vCPU's thread (/proc/self/task/TID/stat)."""
        if self.native_id is None:
            return 0.0
        try:
            with open(f"/proc/self/task/{self.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
