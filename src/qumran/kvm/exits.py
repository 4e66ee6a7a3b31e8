"""vCPU exits as typed values, decoded from ``struct kvm_run`` after KVM_RUN returns.

The VMM dispatches on these with ``match``; it never reads kvm_run fields itself.
Documentation/virt/kvm/api.rst, section "The kvm_run structure".
"""

from __future__ import annotations

import mmap
import struct

from qumran.kvm import structs as s
from qumran.kvm.constants import KVM_EXIT_IO_OUT, ExitReason
from qumran.record import Record


class _Exit(Record):
    """A vCPU exit: a value record (:mod:`qumran.record`; not a dataclass, whose import of
    ``inspect`` and ``ast`` costs every VMM process over 1 MiB of resident memory). Each
    subclass lists its fields once, in ``__slots__``; ``match`` takes them positionally."""

    __slots__: tuple[str, ...] = ()


class IoIn(_Exit):
    """The guest reads ``count`` items of ``size`` bytes from ``port``.

    The VMM answers by writing them at ``data_offset`` in the run page before the next
    KVM_RUN.
    """

    __slots__ = __match_args__ = ("port", "size", "count", "data_offset")

    def __init__(self, port: int, size: int, count: int, data_offset: int) -> None:
        self.port, self.size, self.count, self.data_offset = port, size, count, data_offset


class IoOut(_Exit):
    """The guest wrote ``data`` (``count`` items of ``size`` bytes) to ``port``."""

    __slots__ = __match_args__ = ("port", "size", "count", "data")

    def __init__(self, port: int, size: int, count: int, data: bytes) -> None:
        self.port, self.size, self.count, self.data = port, size, count, data


class MmioRead(_Exit):
    __slots__ = __match_args__ = ("addr", "length")

    def __init__(self, addr: int, length: int) -> None:
        self.addr, self.length = addr, length


class MmioWrite(_Exit):
    __slots__ = __match_args__ = ("addr", "data")

    def __init__(self, addr: int, data: bytes) -> None:
        self.addr, self.data = addr, data


class Halted(_Exit):
    """HLT with no in-kernel LAPIC to wait on it (never seen with the in-kernel irqchip)."""

    __slots__ = ()


class Interrupted(_Exit):
    """KVM_RUN returned because of a signal or ``immediate_exit`` (KVM_EXIT_INTR)."""

    __slots__ = ()


class TripleFault(_Exit):
    """KVM_EXIT_SHUTDOWN: the vCPU triple-faulted; its state is undefined."""

    __slots__ = ()


class SystemEventExit(_Exit):
    """KVM_EXIT_SYSTEM_EVENT (PSCI-style shutdown/reset requests)."""

    __slots__ = __match_args__ = ("type",)

    def __init__(self, type: int) -> None:
        self.type = type


class InternalErrorExit(_Exit):
    """KVM_EXIT_INTERNAL_ERROR, e.g. an instruction KVM could not emulate."""

    __slots__ = __match_args__ = ("suberror", "data")

    def __init__(self, suberror: int, data: tuple[int, ...]) -> None:
        self.suberror, self.data = suberror, data


class FailEntry(_Exit):
    """KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest."""

    __slots__ = __match_args__ = ("reason", "cpu")

    def __init__(self, reason: int, cpu: int) -> None:
        self.reason, self.cpu = reason, cpu


class Unhandled(_Exit):
    """Any other exit reason (for KVM_EXIT_UNKNOWN, ``detail`` is the hardware reason)."""

    __slots__ = __match_args__ = ("reason", "detail")

    def __init__(self, reason: int, detail: int = 0) -> None:
        self.reason, self.detail = reason, detail


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
