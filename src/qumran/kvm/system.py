"""Thin owners of the /dev/kvm, VM and vCPU file descriptors.

No policy lives here: each method is one ioctl (or a couple that always go together),
errors are translated into :mod:`qumran.kvm.errors`, and an object sets its fd to -1 when
closed so a double close or a use after close is caught.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from collections.abc import Iterable

from qumran.kvm import constants as k
from qumran.kvm import structs as s
from qumran.kvm.errors import KvmError, KvmUnavailable
from qumran.kvm.exits import INTERRUPTED, VcpuExit, decode_exit

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_libc.ioctl.restype = ctypes.c_int

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the VMM's run time (resident memory)
    from typing import Any, TypeVar

    T = TypeVar("T", bound=ctypes.Structure)

# KVM_GET_SUPPORTED_CPUID fails with E2BIG when the buffer is too small; real CPUs report
# well under a hundred leaves, and kvm caps the table at 256 entries (KVM_MAX_CPUID_ENTRIES).
MAX_CPUID_ENTRIES = 256


class _Fd:
    """An owned file descriptor, -1 once closed."""

    def __init__(self, fd: int, what: str) -> None:
        self._fd = fd
        self._what = what

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise KvmError(f"{self._what}: use after close", errno.EBADF)
        return self._fd

    def _ioctl(self, name: str, request: int, arg: Any = 0) -> int:
        """fcntl.ioctl with error translation (``arg``: int or a mutable ctypes object)."""
        try:
            if isinstance(arg, int):
                return fcntl.ioctl(self.fd, request, arg)
            return int(fcntl.ioctl(self.fd, request, arg, True))
        except OSError as exc:
            raise KvmError(name, exc.errno) from None

    def _ioctl_ulong(self, name: str, request: int, arg: int) -> int:
        """ioctl whose integer argument does not fit a signed C int (fcntl.ioctl's limit)."""
        ret = _libc.ioctl(self.fd, request, arg)
        if ret < 0:
            raise KvmError(name, ctypes.get_errno())
        return int(ret)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0


class Kvm(_Fd):
    """The /dev/kvm system fd."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise KvmUnavailable(f"open {path}", exc.errno) from None
        super().__init__(fd, path)
        version = self._ioctl("KVM_GET_API_VERSION", k.KVM_GET_API_VERSION)
        if version != k.KVM_API_VERSION:
            self.close()
            raise KvmUnavailable("KVM_GET_API_VERSION", None, f"unsupported API {version}")

    def check_extension(self, cap: int) -> int:
        return self._ioctl("KVM_CHECK_EXTENSION", k.KVM_CHECK_EXTENSION, cap)

    def vcpu_mmap_size(self) -> int:
        return self._ioctl("KVM_GET_VCPU_MMAP_SIZE", k.KVM_GET_VCPU_MMAP_SIZE)

    def supported_cpuid(self) -> list[s.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID, as independent copies of each entry."""
        table = s.cpuid2_type(MAX_CPUID_ENTRIES)()
        table.nent = MAX_CPUID_ENTRIES
        self._ioctl("KVM_GET_SUPPORTED_CPUID", k.KVM_GET_SUPPORTED_CPUID, table)
        entries = table.entries[: table.nent]
        return [s.kvm_cpuid_entry2.from_buffer_copy(e) for e in entries]

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and emulates (what a snapshot keeps).
        The first call with room for none learns the count (E2BIG), the second the list."""
        probe = s.msr_list_type(0)()
        try:
            self._ioctl("KVM_GET_MSR_INDEX_LIST", k.KVM_GET_MSR_INDEX_LIST, probe)
        except KvmError as exc:
            if exc.errno != errno.E2BIG:
                raise
        table = s.msr_list_type(probe.nmsrs)()
        table.nmsrs = probe.nmsrs
        self._ioctl("KVM_GET_MSR_INDEX_LIST", k.KVM_GET_MSR_INDEX_LIST, table)
        return list(table.indices[: table.nmsrs])

    def create_vm(self) -> Vm:
        fd = self._ioctl("KVM_CREATE_VM", k.KVM_CREATE_VM, 0)
        return Vm(fd, self.vcpu_mmap_size())


class Vm(_Fd):
    """A VM fd: memory slots, irqchip, PIT, interrupt lines, vCPUs."""

    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        super().__init__(fd, "VM fd")
        self._vcpu_mmap_size = vcpu_mmap_size

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, size: int, userspace_addr: int, flags: int = 0
    ) -> None:
        region = s.kvm_userspace_memory_region(slot, flags, guest_phys_addr, size, userspace_addr)
        self._ioctl("KVM_SET_USER_MEMORY_REGION", k.KVM_SET_USER_MEMORY_REGION, region)

    def set_tss_addr(self, addr: int) -> None:
        # The address (e.g. 0xfffbd000) overflows the signed int fcntl.ioctl accepts.
        self._ioctl_ulong("KVM_SET_TSS_ADDR", k.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        self._ioctl("KVM_SET_IDENTITY_MAP_ADDR", k.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr))

    def create_irqchip(self) -> None:
        self._ioctl("KVM_CREATE_IRQCHIP", k.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = k.KVM_PIT_SPEAKER_DUMMY) -> None:
        self._ioctl("KVM_CREATE_PIT2", k.KVM_CREATE_PIT2, s.kvm_pit_config(flags=flags))

    def irq_line(self, irq: int, level: bool) -> None:
        self._ioctl("KVM_IRQ_LINE", k.KVM_IRQ_LINE, s.kvm_irq_level(irq, int(level)))

    def irqfd(self, eventfd: int, gsi: int, flags: int = 0) -> None:
        self._ioctl("KVM_IRQFD", k.KVM_IRQFD, s.kvm_irqfd(fd=eventfd, gsi=gsi, flags=flags))

    def ioeventfd(self, eventfd: int, addr: int, length: int, flags: int = 0) -> None:
        arg = s.kvm_ioeventfd(addr=addr, len=length, fd=eventfd, flags=flags)
        self._ioctl("KVM_IOEVENTFD", k.KVM_IOEVENTFD, arg)

    def register_coalesced_pio(self, port: int, size: int) -> None:
        """Guest writes to ports [port, port+size) go to the coalesced ring instead of
        exiting (KVM_CAP_COALESCED_PIO); reads still exit."""
        zone = s.kvm_coalesced_mmio_zone(addr=port, size=size, pio=1)
        self._ioctl("KVM_REGISTER_COALESCED_MMIO", k.KVM_REGISTER_COALESCED_MMIO, zone)

    def unregister_coalesced_pio(self, port: int, size: int) -> None:
        zone = s.kvm_coalesced_mmio_zone(addr=port, size=size, pio=1)
        self._ioctl("KVM_UNREGISTER_COALESCED_MMIO", k.KVM_UNREGISTER_COALESCED_MMIO, zone)

    def set_gsi_routing(self, entries: list[s.kvm_irq_routing_entry]) -> None:
        """KVM_SET_GSI_ROUTING: replaces the whole table, default irqchip routes included."""
        table = s.irq_routing_type(len(entries))()
        table.nr = len(entries)
        for i, entry in enumerate(entries):
            table.entries[i] = entry
        self._ioctl("KVM_SET_GSI_ROUTING", k.KVM_SET_GSI_ROUTING, table)

    def signal_msi(self, address: int, data: int) -> int:
        """KVM_SIGNAL_MSI: >0 delivered, 0 blocked by the guest."""
        msi = s.kvm_msi(address_lo=address & 0xFFFF_FFFF, address_hi=address >> 32, data=data)
        return self._ioctl("KVM_SIGNAL_MSI", k.KVM_SIGNAL_MSI, msi)

    def get_irqchip(self, chip_id: int) -> s.kvm_irqchip:
        chip = s.kvm_irqchip(chip_id=chip_id)
        self._ioctl("KVM_GET_IRQCHIP", k.KVM_GET_IRQCHIP, chip)
        return chip

    def set_irqchip(self, chip: s.kvm_irqchip) -> None:
        self._ioctl("KVM_SET_IRQCHIP", k.KVM_SET_IRQCHIP, chip)

    def get_pit2(self) -> s.kvm_pit_state2:
        return self._get("KVM_GET_PIT2", k.KVM_GET_PIT2, s.kvm_pit_state2)

    def set_pit2(self, state: s.kvm_pit_state2) -> None:
        self._ioctl("KVM_SET_PIT2", k.KVM_SET_PIT2, state)

    def get_clock(self) -> s.kvm_clock_data:
        return self._get("KVM_GET_CLOCK", k.KVM_GET_CLOCK, s.kvm_clock_data)

    def set_clock(self, clock: int) -> None:
        """KVM_SET_CLOCK: kvmclock reads ``clock`` ns now (and runs on from there)."""
        self._ioctl("KVM_SET_CLOCK", k.KVM_SET_CLOCK, s.kvm_clock_data(clock=clock))

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        fd = self._ioctl("KVM_CREATE_VCPU", k.KVM_CREATE_VCPU, vcpu_id)
        try:
            return Vcpu(fd, vcpu_id, self._vcpu_mmap_size)
        except BaseException:
            os.close(fd)
            raise

    def _get(self, name: str, request: int, struct: type[T]) -> T:
        value = struct()
        self._ioctl(name, request, value)
        return value


class Vcpu(_Fd):
    """A vCPU fd with its mapped ``struct kvm_run``."""

    def __init__(self, fd: int, vcpu_id: int, mmap_size: int) -> None:
        super().__init__(fd, f"vCPU {vcpu_id} fd")
        self.id = vcpu_id
        try:
            self._map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise KvmError(f"mmap kvm_run of vCPU {vcpu_id}", exc.errno) from None
        self.run_struct: s.kvm_run | None = s.kvm_run.from_buffer(self._map)

    @property
    def run_page(self) -> mmap.mmap:
        """The shared page; KVM_EXIT_IO data lives at ``run.io.data_offset`` in it."""
        return self._map

    def run(self) -> VcpuExit:
        """KVM_RUN until the next exit.

        A signal or ``immediate_exit`` (EINTR), or an AP leaving wait-for-SIPI (EAGAIN),
        gives ``Interrupted``: nothing to handle, run again.
        """
        try:
            fcntl.ioctl(self.fd, k.KVM_RUN, 0)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return INTERRUPTED
            if exc.errno == errno.EAGAIN:
                # An AP woke from wait-for-SIPI: no exit to report, run it again.
                return INTERRUPTED
            raise KvmError(f"KVM_RUN on vCPU {self.id}", exc.errno) from None
        run = self.run_struct
        assert run is not None
        return decode_exit(run, self._map)

    def complete_mmio_read(self, data: bytes) -> None:
        """Answer a KVM_EXIT_MMIO read; KVM copies ``data`` into the guest on the next run."""
        if self.run_struct is not None:
            ctypes.memmove(self.run_struct.mmio.data, data, min(len(data), 8))

    def set_immediate_exit(self, value: bool) -> None:
        """Make the next (or current) KVM_RUN return at once (KVM_CAP_IMMEDIATE_EXIT)."""
        if self.run_struct is not None:
            self.run_struct.immediate_exit = int(value)

    def get_regs(self) -> s.kvm_regs:
        return self._get("KVM_GET_REGS", k.KVM_GET_REGS, s.kvm_regs)

    def set_regs(self, regs: s.kvm_regs) -> None:
        self._ioctl("KVM_SET_REGS", k.KVM_SET_REGS, regs)

    def get_sregs(self) -> s.kvm_sregs:
        return self._get("KVM_GET_SREGS", k.KVM_GET_SREGS, s.kvm_sregs)

    def set_sregs(self, sregs: s.kvm_sregs) -> None:
        self._ioctl("KVM_SET_SREGS", k.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> s.kvm_fpu:
        return self._get("KVM_GET_FPU", k.KVM_GET_FPU, s.kvm_fpu)

    def set_fpu(self, fpu: s.kvm_fpu) -> None:
        self._ioctl("KVM_SET_FPU", k.KVM_SET_FPU, fpu)

    def get_lapic(self) -> s.kvm_lapic_state:
        return self._get("KVM_GET_LAPIC", k.KVM_GET_LAPIC, s.kvm_lapic_state)

    def set_lapic(self, lapic: s.kvm_lapic_state) -> None:
        self._ioctl("KVM_SET_LAPIC", k.KVM_SET_LAPIC, lapic)

    def get_mp_state(self) -> int:
        return int(self._get("KVM_GET_MP_STATE", k.KVM_GET_MP_STATE, s.kvm_mp_state).mp_state)

    def set_mp_state(self, state: int) -> None:
        self._ioctl("KVM_SET_MP_STATE", k.KVM_SET_MP_STATE, s.kvm_mp_state(state))

    def get_xsave(self) -> s.kvm_xsave:
        return self._get("KVM_GET_XSAVE", k.KVM_GET_XSAVE, s.kvm_xsave)

    def set_xsave(self, xsave: s.kvm_xsave) -> None:
        self._ioctl("KVM_SET_XSAVE", k.KVM_SET_XSAVE, xsave)

    def get_xcrs(self) -> s.kvm_xcrs:
        return self._get("KVM_GET_XCRS", k.KVM_GET_XCRS, s.kvm_xcrs)

    def set_xcrs(self, xcrs: s.kvm_xcrs) -> None:
        self._ioctl("KVM_SET_XCRS", k.KVM_SET_XCRS, xcrs)

    def get_debugregs(self) -> s.kvm_debugregs:
        return self._get("KVM_GET_DEBUGREGS", k.KVM_GET_DEBUGREGS, s.kvm_debugregs)

    def set_debugregs(self, regs: s.kvm_debugregs) -> None:
        self._ioctl("KVM_SET_DEBUGREGS", k.KVM_SET_DEBUGREGS, regs)

    def get_vcpu_events(self) -> s.kvm_vcpu_events:
        return self._get("KVM_GET_VCPU_EVENTS", k.KVM_GET_VCPU_EVENTS, s.kvm_vcpu_events)

    def set_vcpu_events(self, events: s.kvm_vcpu_events) -> None:
        self._ioctl("KVM_SET_VCPU_EVENTS", k.KVM_SET_VCPU_EVENTS, events)

    def set_cpuid2(self, entries: Iterable[s.kvm_cpuid_entry2]) -> None:
        items = list(entries)
        table = s.cpuid2_type(len(items))()
        table.nent = len(items)
        for i, entry in enumerate(items):
            table.entries[i] = entry
        self._ioctl("KVM_SET_CPUID2", k.KVM_SET_CPUID2, table)

    def set_msrs(self, msrs: dict[int, int]) -> None:
        table = s.msrs_type(len(msrs))()
        table.nmsrs = len(msrs)
        for i, (index, data) in enumerate(msrs.items()):
            table.entries[i] = s.kvm_msr_entry(index=index, data=data)
        written = self._ioctl("KVM_SET_MSRS", k.KVM_SET_MSRS, table)
        if written != len(msrs):
            bad = list(msrs)[written]
            raise KvmError("KVM_SET_MSRS", None, f"MSR {bad:#x} rejected")

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        wanted = list(indices)
        table = s.msrs_type(len(wanted))()
        table.nmsrs = len(wanted)
        for i, index in enumerate(wanted):
            table.entries[i].index = index
        read = self._ioctl("KVM_GET_MSRS", k.KVM_GET_MSRS, table)
        return {e.index: e.data for e in table.entries[:read]}

    def _get(self, name: str, request: int, struct: type[T]) -> T:
        value = struct()
        self._ioctl(name, request, value)
        return value

    def close(self) -> None:
        # The ctypes view must go before the mapping, or mmap.close() raises BufferError.
        self.run_struct = None
        if not self._map.closed:
            self._map.close()
        super().close()
