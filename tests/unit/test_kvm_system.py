"""Kvm/Vm/Vcpu against whatever /dev/kvm the machine has (any KVM answers these ioctls)."""

from __future__ import annotations

import os

import pytest

from qumran.kvm import Kvm, KvmError, KvmUnavailable
from qumran.kvm.constants import Cap

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no /dev/kvm")


def test_missing_device_is_kvm_unavailable(tmp_path: object) -> None:
    with pytest.raises(KvmUnavailable, match="No such file"):
        Kvm("/nonexistent/kvm")


def test_vm_and_vcpu_round_trip() -> None:
    kvm = Kvm()
    try:
        assert kvm.check_extension(Cap.USER_MEMORY) == 1
        cpuid = kvm.supported_cpuid()
        assert any(e.function == 0 for e in cpuid)
        vm = kvm.create_vm()
        vm.set_tss_addr(0xFFFBD000)  # above 2**31: goes through the unsigned path
        vm.create_irqchip()
        vm.create_pit2()
        vcpu = vm.create_vcpu(0)
        regs = vcpu.get_regs()
        regs.rax = 0x1234
        vcpu.set_regs(regs)
        assert vcpu.get_regs().rax == 0x1234
        vcpu.set_cpuid2(cpuid)
        vcpu.close()
        vcpu.close()  # idempotent
        with pytest.raises(KvmError, match="use after close"):
            vcpu.get_regs()
        vm.close()
    finally:
        kvm.close()


def test_ioctl_errors_are_translated() -> None:
    kvm = Kvm()
    vm = kvm.create_vm()
    try:
        vm.create_vcpu(0).close()
        with pytest.raises(KvmError, match="KVM_CREATE_VCPU failed: File exists"):
            vm.create_vcpu(0)
    finally:
        vm.close()
        kvm.close()
