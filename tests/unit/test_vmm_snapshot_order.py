"""The order qumran-vmm reads and writes a vCPU's KVM state in a snapshot: some KVM calls
change what later ones see (see qumran.vmm.snapshot.kvmstate)."""

from __future__ import annotations

import ctypes
from typing import Any

from qumran.kvm import structs as s
from qumran.vmm.arch import msrs
from qumran.vmm.snapshot import kvmstate


class RecordingVcpu:
    """Answers every get with an empty structure and writes down each call, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.msrs_written: list[int] = []

    def __getattr__(self, name: str) -> Any:
        structs = {"regs": s.kvm_regs, "sregs": s.kvm_sregs, "xsave": s.kvm_xsave,
                   "xcrs": s.kvm_xcrs, "debugregs": s.kvm_debugregs,
                   "lapic": s.kvm_lapic_state, "vcpu_events": s.kvm_vcpu_events}  # fmt: skip

        def call(*args: Any) -> Any:
            self.calls.append(name)
            what = name.removeprefix("get_").removeprefix("set_")
            if name == "get_mp_state":
                return 0
            if name == "get_msrs":
                return {index: 0 for index in args[0]}
            if name == "set_msrs":
                self.msrs_written = list(args[0])
                return None
            if name.startswith("get_"):
                struct: type[ctypes.Structure] = structs[what]
                return struct()
            return None

        return call


KVM_MSRS = [0x10, msrs.MSR_KVM_ASYNC_PF_EN, 0x4B564D03, 0x4B564D06, 0x4B564D07]


def test_a_saved_vcpu_reads_its_events_before_any_register() -> None:
    vcpu = RecordingVcpu()
    kvmstate.save_vcpu(vcpu, KVM_MSRS)  # type: ignore[arg-type]
    assert vcpu.calls[:3] == ["get_vcpu_events", "get_mp_state", "get_regs"]
    assert vcpu.calls.index("get_sregs") > vcpu.calls.index("get_vcpu_events")


def test_a_restored_vcpu_enables_async_page_faults_after_their_vector() -> None:
    saved = kvmstate.save_vcpu(RecordingVcpu(), KVM_MSRS)  # type: ignore[arg-type]
    vcpu = RecordingVcpu()
    kvmstate.restore_vcpu(vcpu, saved)  # type: ignore[arg-type]
    assert vcpu.msrs_written == [0x10, 0x4B564D03, 0x4B564D06, 0x4B564D07, 0x4B564D02]
    assert vcpu.calls.index("set_lapic") < vcpu.calls.index("set_msrs")
    assert vcpu.calls[-1] == "set_vcpu_events"
