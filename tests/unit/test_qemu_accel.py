"""Choosing KVM or TCG: the CPU flag and a working /dev/kvm, never /dev/kvm alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qumran.drivers.qemu.accel import (
    KVM_GET_API_VERSION,
    choose_accel,
    kvm_api_version,
    qemu_version,
    virtualization_flag,
)

KVM = Path("/dev/kvm")
needs_kvm_device = pytest.mark.skipif(
    not os.access(KVM, os.R_OK | os.W_OK), reason="needs a /dev/kvm this user can open"
)


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\n"
        f"flags\t\t: fpu vme de pse {flags} sse sse2\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    return path


def test_ioctl_number_is_derived_as_in_the_kernel_header() -> None:
    assert KVM_GET_API_VERSION == 0xAE00  # _IO(0xAE, 0x00)


@pytest.mark.parametrize(("flags", "found"), [("vmx", "vmx"), ("svm", "svm"), ("lm nx", None)])
def test_virtualization_flag(tmp_path: Path, flags: str, found: str | None) -> None:
    assert virtualization_flag(cpuinfo(tmp_path, flags)) == found


def test_no_cpuinfo_means_no_flag(tmp_path: Path) -> None:
    assert virtualization_flag(tmp_path / "missing") is None


@needs_kvm_device
def test_a_working_device_and_the_flag_give_kvm(tmp_path: Path) -> None:
    choice = choose_accel(cpuinfo(tmp_path, "svm"), KVM)
    assert choice.accel == "kvm"
    assert choice.reason == "KVM: the CPU has svm and /dev/kvm answers API version 12"


@needs_kvm_device
def test_a_device_without_the_flag_is_a_software_kvm(tmp_path: Path) -> None:
    # This is the situation on a kvm_pvm host: /dev/kvm answers, guests cannot boot.
    choice = choose_accel(cpuinfo(tmp_path, "lm"), KVM)
    assert choice.accel == "tcg"
    assert "no vmx/svm flag" in choice.reason and "software KVM" in choice.reason


def test_the_flag_without_a_device_gives_tcg(tmp_path: Path) -> None:
    choice = choose_accel(cpuinfo(tmp_path, "vmx"), tmp_path / "kvm")
    assert choice.accel == "tcg"
    assert choice.reason == f"TCG: the CPU has vmx but {tmp_path / 'kvm'} does not exist"


def test_a_device_that_is_not_kvm_gives_tcg(tmp_path: Path) -> None:
    not_kvm = tmp_path / "kvm"
    not_kvm.write_bytes(b"")
    version, why = kvm_api_version(not_kvm)
    assert version is None and "does not answer KVM_GET_API_VERSION" in why
    assert choose_accel(cpuinfo(tmp_path, "vmx"), not_kvm).accel == "tcg"


def test_neither_flag_nor_device(tmp_path: Path) -> None:
    choice = choose_accel(cpuinfo(tmp_path, ""), tmp_path / "kvm")
    assert choice.accel == "tcg"
    assert "no vmx/svm flag" in choice.reason and "does not exist" in choice.reason


def test_this_host_never_gets_kvm_without_the_flag() -> None:
    choice = choose_accel()
    if virtualization_flag() is None:
        assert choice.accel == "tcg"
    assert choice.reason.startswith(choice.accel.upper())


def test_qemu_version_is_read_from_the_binary(tmp_path: Path) -> None:
    fake = tmp_path / "qemu"
    fake.write_text(
        "#!/bin/sh\necho 'QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)'\n"
        "echo 'Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers'\n"
    )
    fake.chmod(0o755)
    assert qemu_version(str(fake)) == "7.2.22"
    assert qemu_version(str(tmp_path / "missing")) is None
