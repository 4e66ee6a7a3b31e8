"""The console's output without an exit per byte: COM1's THR in KVM's coalesced PIO ring.

Linux prints to a serial console by polling: for each byte it reads LSR and writes THR,
two exits, each a trip through Python here. While the UART is quiet (serial.py says when)
a THR write changes nothing the guest can read, so KVM may queue it instead of exiting
(KVM_CAP_COALESCED_PIO); the byte reaches the console at the next exit of any vCPU, which
takes the queue first (the next byte's LSR read, at the latest when the guest restores
IER). A guest that writes bytes and then runs on without an exit would leave them queued:
the main loop's tick takes them too, at most :data:`TICK` seconds late.

Drains from several threads are serialised by a lock, and the ring's ``first`` moves past
a write only once it is handled (kvm/coalesced.py), so a vCPU that finds the ring empty
knows every queued byte has gone out, and its own next write cannot overtake one.
"""

from __future__ import annotations

import mmap
import threading

from qumran.kvm.coalesced import CoalescedRing
from qumran.kvm.constants import Cap
from qumran.kvm.errors import KvmError
from qumran.kvm.system import Kvm, Vcpu, Vm
from qumran.vmm.devices import PioBus
from qumran.vmm.devices.legacy.serial import COM1_BASE, Serial16550
from qumran.vmm.log import get_logger

log = get_logger(__name__)

TICK = 0.05  # seconds: the longest a queued byte waits when no vCPU exits


class ConsoleCoalescing:
    """Registers COM1's THR with KVM while the UART is quiet; hands queued writes to the bus."""

    def __init__(self, vm: Vm, ring: CoalescedRing, bus: PioBus, port: int = COM1_BASE) -> None:
        self._vm = vm
        self._ring = ring
        self._bus = bus
        self._port = port
        self._lock = threading.Lock()
        self.registered = False
        self.count = 0  # writes taken from the ring

    def set_quiet(self, quiet: bool) -> None:
        """Serial16550's quiet watch (on the thread that touched the UART, its lock held):
        an ioctl only when the answer differs from the last one."""
        if quiet == self.registered:
            return
        try:
            if quiet:
                self._vm.register_coalesced_pio(self._port, 1)
            else:
                self._vm.unregister_coalesced_pio(self._port, 1)
        except KvmError as exc:  # the console still works, one exit per byte
            log.warning("console output: %s", exc)
            return
        self.registered = quiet

    def drain(self) -> None:
        """Hand every queued write to the bus, in order (before handling any exit)."""
        if not self._ring.pending():
            return
        with self._lock:
            self.count += self._ring.drain(self._write)

    def _write(self, port: int, pio: bool, data: bytes) -> None:
        if pio:
            self._bus.write(port, len(data), int.from_bytes(data, "little"))


def coalesce_console(
    kvm: Kvm, vm: Vm, vcpu: Vcpu, bus: PioBus, serial: Serial16550
) -> ConsoleCoalescing | None:
    """Coalescing for COM1's THR, if this KVM has coalesced PIO; None otherwise. The ring
    is in every vCPU's mapping; ``vcpu``'s is read."""
    page = kvm.check_extension(Cap.COALESCED_MMIO)
    if page <= 0 or kvm.check_extension(Cap.COALESCED_PIO) <= 0:
        return None
    ring = CoalescedRing(vcpu.run_page, page * mmap.PAGESIZE)
    coalescing = ConsoleCoalescing(vm, ring, bus)
    serial.watch_quiet(coalescing.set_quiet)
    return coalescing
