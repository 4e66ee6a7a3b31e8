"""The state KVM holds for a VM and its vCPUs, as JSON-ready values, and back.

Order matters, on both sides:

- Saving a vCPU starts with KVM_GET_VCPU_EVENTS: an exception KVM has queued but not yet
  delivered keeps its payload (CR2 of a page fault, DR6 of a debug trap) aside, and this
  call writes it into the register, so the special registers are read after it, or a
  restored page fault would carry a stale CR2. Then KVM_GET_MP_STATE: it makes KVM take
  the LAPIC's pending INIT and SIPI, which changes the registers read after it.
- Restoring: the CPUID table first (the builder sets it: MSRs and XSAVE components are
  accepted only as far as CPUID allows them); then MP state, registers, special
  registers (before the MSRs: EFER and the APIC base come with them), XSAVE and XCRs,
  debug registers, the LAPIC (before the MSRs: KVM drops a TSC deadline written while the
  LAPIC timer is not in TSC-deadline mode), the MSRs in index order (IA32_TSC before
  IA32_TSC_DEADLINE, which is a point on the guest's TSC) but for the async page fault
  enable, which goes last: writing it wakes every guest task waiting on a page, with an
  interrupt whose vector is the one in MSR_KVM_ASYNC_PF_INT, so that must be in place
  first; then the pending events (an interrupt or exception being injected refers to all
  of the above).
- The VM: PIC, IOAPIC and PIT, then kvmclock right before the vCPUs run again, so the
  guest's clock continues from the value it had, not from the time spent on disk.
"""

from __future__ import annotations

import base64
import ctypes

from qumran.kvm import Vcpu, Vm
from qumran.kvm import constants as k
from qumran.kvm import structs as s
from qumran.vmm.arch import msrs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T", bound=ctypes.Structure)

IRQCHIPS = {"pic_master": k.KVM_IRQCHIP_PIC_MASTER, "pic_slave": k.KVM_IRQCHIP_PIC_SLAVE,
            "ioapic": k.KVM_IRQCHIP_IOAPIC}  # fmt: skip


def _blob(value: ctypes.Structure) -> str:
    return base64.b64encode(bytes(value)).decode()


def _unblob(struct: type[T], text: str) -> T:
    raw = base64.b64decode(text)
    if len(raw) != ctypes.sizeof(struct):
        raise ValueError(f"{struct.__name__} of {len(raw)} bytes, not {ctypes.sizeof(struct)}")
    return struct.from_buffer_copy(raw)


def readable_msrs(vcpu: Vcpu, indices: list[int]) -> list[int]:
    """The MSRs of ``indices`` that this vCPU reads back: KVM_GET_MSRS stops at the first
    one it refuses (an MSR listed for a feature the guest's CPUID lacks), so skip it and
    go on from the next."""
    ok: list[int] = []
    rest = sorted(indices)
    while rest:
        got = vcpu.get_msrs(rest)
        ok.extend(got)
        rest = rest[len(got) + 1 :]
    return ok


def _msr_order(item: tuple[int, int]) -> tuple[bool, int]:
    """Index order, the async page fault enable last (see the module's docstring)."""
    return (item[0] == msrs.MSR_KVM_ASYNC_PF_EN, item[0])


def save_vcpu(vcpu: Vcpu, indices: list[int]) -> dict[str, Any]:
    events = _blob(vcpu.get_vcpu_events())  # these two first: see the module's docstring
    mp_state = vcpu.get_mp_state()
    return {
        "mp_state": mp_state,
        "regs": _blob(vcpu.get_regs()),
        "sregs": _blob(vcpu.get_sregs()),
        "xsave": _blob(vcpu.get_xsave()),
        "xcrs": _blob(vcpu.get_xcrs()),
        "debugregs": _blob(vcpu.get_debugregs()),
        "lapic": _blob(vcpu.get_lapic()),
        "msrs": sorted(vcpu.get_msrs(indices).items()),
        "events": events,
    }


def restore_vcpu(vcpu: Vcpu, state: dict[str, Any]) -> None:
    """Put a saved vCPU back (its CPUID set already)."""
    vcpu.set_mp_state(int(state["mp_state"]))
    vcpu.set_regs(_unblob(s.kvm_regs, state["regs"]))
    vcpu.set_sregs(_unblob(s.kvm_sregs, state["sregs"]))
    vcpu.set_xsave(_unblob(s.kvm_xsave, state["xsave"]))
    vcpu.set_xcrs(_unblob(s.kvm_xcrs, state["xcrs"]))
    vcpu.set_debugregs(_unblob(s.kvm_debugregs, state["debugregs"]))
    vcpu.set_lapic(_unblob(s.kvm_lapic_state, state["lapic"]))
    vcpu.set_msrs(dict(sorted(((int(i), int(v)) for i, v in state["msrs"]), key=_msr_order)))
    events = _unblob(s.kvm_vcpu_events, state["events"])
    # KVM_GET_VCPU_EVENTS fills every field but flags only what it must; the pending NMI
    # and the SIPI vector are taken only when flagged.
    events.flags |= k.KVM_VCPUEVENT_VALID_NMI_PENDING | k.KVM_VCPUEVENT_VALID_SIPI_VECTOR
    vcpu.set_vcpu_events(events)


def save_vm(vm: Vm) -> dict[str, Any]:
    state: dict[str, Any] = {name: _blob(vm.get_irqchip(chip)) for name, chip in IRQCHIPS.items()}
    state["pit"] = _blob(vm.get_pit2())
    state["clock"] = int(vm.get_clock().clock)
    return state


def restore_vm(vm: Vm, state: dict[str, Any]) -> None:
    """Interrupt controllers and PIT; the clock is :func:`restore_clock`'s, last."""
    for name, chip in IRQCHIPS.items():
        saved = _unblob(s.kvm_irqchip, state[name])
        if saved.chip_id != chip:
            raise ValueError(f"{name} saved as irqchip {saved.chip_id}")
        vm.set_irqchip(saved)
    vm.set_pit2(_unblob(s.kvm_pit_state2, state["pit"]))


def restore_clock(vm: Vm, state: dict[str, Any]) -> None:
    vm.set_clock(int(state["clock"]))
