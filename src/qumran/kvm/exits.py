"""vCPU exits as typed values, decoded from ``struct kvm_run`` after KVM_RUN returns.

The VMM dispatches on these with ``match``; it never reads kvm_run fields itself.
Documentation/virt/kvm/api.rst, section "The kvm_run structure".
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

from qumran.kvm import structs as s
from qumran.kvm.constants import KVM_EXIT_IO_OUT, ExitReason

# The two port-I/O exits are built on every exit: plain slotted classes, not frozen ones
# (a frozen dataclass's __init__ goes through object.__setattr__, measurably slower).


@dataclass(slots=True)
class IoIn:
    """The guest reads ``count`` items of ``size`` bytes from ``port``.

    The VMM answers by writing them at ``data_offset`` in the run page before the next
    KVM_RUN.
    """

    port: int
    size: int
    count: int
    data_offset: int


@dataclass(slots=True)
class IoOut:
    """The guest wrote ``data`` (``count`` items of ``size`` bytes) to ``port``."""

    port: int
    size: int
    count: int
    data: bytes


@dataclass(frozen=True, slots=True)
class MmioRead:
    addr: int
    length: int


@dataclass(frozen=True, slots=True)
class MmioWrite:
    addr: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Halted:
    """HLT with no in-kernel LAPIC to wait on it (never seen with the in-kernel irqchip)."""


@dataclass(frozen=True, slots=True)
class Interrupted:
    """KVM_RUN returned because of a signal or ``immediate_exit`` (KVM_EXIT_INTR)."""


@dataclass(frozen=True, slots=True)
class TripleFault:
    """KVM_EXIT_SHUTDOWN: the vCPU triple-faulted; its state is undefined."""


@dataclass(frozen=True, slots=True)
class SystemEventExit:
    """KVM_EXIT_SYSTEM_EVENT (PSCI-style shutdown/reset requests)."""

    type: int


@dataclass(frozen=True, slots=True)
class InternalErrorExit:
    """KVM_EXIT_INTERNAL_ERROR, e.g. an instruction KVM could not emulate."""

    suberror: int
    data: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FailEntry:
    """KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest."""

    reason: int
    cpu: int


@dataclass(frozen=True, slots=True)
class Unhandled:
    """Any other exit reason (for KVM_EXIT_UNKNOWN, ``detail`` is the hardware reason)."""

    reason: int
    detail: int = 0


VcpuExit = (
    IoIn
    | IoOut
    | MmioRead
    | MmioWrite
    | Halted
    | Interrupted
    | TripleFault
    | SystemEventExit
    | InternalErrorExit
    | FailEntry
    | Unhandled
)

INTERRUPTED = Interrupted()
_EXIT_IO = int(ExitReason.IO)
_REASON = struct.Struct("<I")
_REASON_OFFSET = s.kvm_run.exit_reason.offset
_IO = struct.Struct("<BBHIQ")  # struct kvm_run.io: direction, size, port, count, data_offset
_EXIT_OFFSET = s.kvm_run.exit.offset
_HALTED = Halted()
_TRIPLE_FAULT = TripleFault()


def decode_exit(run: s.kvm_run, page: mmap.mmap | bytes | bytearray) -> VcpuExit:
    """Turn the exit recorded in ``run`` (a view on ``page``) into a typed value."""
    # Port I/O is nearly every exit: read it with two struct calls, not ctypes attributes.
    reason = _REASON.unpack_from(page, _REASON_OFFSET)[0]
    if reason == _EXIT_IO:
        direction, size, port, count, start = _IO.unpack_from(page, _EXIT_OFFSET)
        if direction == KVM_EXIT_IO_OUT:
            return IoOut(port, size, count, bytes(page[start : start + size * count]))
        return IoIn(port, size, count, start)
    if reason == ExitReason.INTR:
        return INTERRUPTED
    if reason == ExitReason.MMIO:
        mmio = run.mmio
        if mmio.is_write:
            return MmioWrite(mmio.phys_addr, bytes(mmio.data)[: mmio.len])
        return MmioRead(mmio.phys_addr, mmio.len)
    if reason == ExitReason.HLT:
        return _HALTED
    if reason == ExitReason.SHUTDOWN:
        return _TRIPLE_FAULT
    if reason == ExitReason.SYSTEM_EVENT:
        return SystemEventExit(run.system_event.type)
    if reason == ExitReason.INTERNAL_ERROR:
        internal = run.internal
        ndata = min(internal.ndata, 16)
        return InternalErrorExit(internal.suberror, tuple(internal.data[:ndata]))
    if reason == ExitReason.FAIL_ENTRY:
        fail = run.fail_entry
        return FailEntry(fail.hardware_entry_failure_reason, fail.cpu)
    if reason == ExitReason.UNKNOWN:
        return Unhandled(reason, run.hardware_exit_reason)
    return Unhandled(reason)
