"""Which accelerator QEMU gets: KVM where it can really run a guest, TCG otherwise.

/dev/kvm alone proves nothing: a software KVM (such as kvm_pvm) provides the device and
answers its ioctls, yet cannot run a stock kernel. Hardware virtualization shows as the
``vmx`` (Intel VT-x) or ``svm`` (AMD-V) flag in /proc/cpuinfo, so KVM needs both the flag
and a /dev/kvm that opens and speaks the stable API.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qumran.drivers.qemu.cmdline import QEMU_BINARY, Accel

CPUINFO = Path("/proc/cpuinfo")
KVM_DEVICE = Path("/dev/kvm")

# include/uapi/linux/kvm.h: KVMIO is 0xAE and KVM_GET_API_VERSION is _IO(KVMIO, 0x00);
# the API version has been 12 since Linux 2.6.22 and "will not change".
KVMIO = 0xAE
KVM_API_VERSION = 12
_IOC_TYPESHIFT = 8  # include/uapi/asm-generic/ioctl.h: _IO(type, nr) = type << 8 | nr


def _io(ioc_type: int, nr: int) -> int:
    return (ioc_type << _IOC_TYPESHIFT) | nr


KVM_GET_API_VERSION = _io(KVMIO, 0x00)


@dataclass(frozen=True)
class AccelChoice:
    accel: Accel
    reason: str  # one sentence for HostInfo.reason


def choose_accel(cpuinfo: Path = CPUINFO, device: Path = KVM_DEVICE) -> AccelChoice:
    """KVM if the CPU has vmx/svm and ``device`` answers KVM_GET_API_VERSION with 12."""
    flag = virtualization_flag(cpuinfo)
    api, problem = kvm_api_version(device)
    if flag is None:
        if api is not None:
            return AccelChoice(
                "tcg",
                f"TCG: {device} answers but the CPU has no vmx/svm flag "
                "(a software KVM cannot run a stock kernel)",
            )
        return AccelChoice("tcg", f"TCG: the CPU has no vmx/svm flag and {problem}")
    if api is None:
        return AccelChoice("tcg", f"TCG: the CPU has {flag} but {problem}")
    if api != KVM_API_VERSION:
        return AccelChoice(
            "tcg", f"TCG: {device} reports KVM API version {api}, expected {KVM_API_VERSION}"
        )
    return AccelChoice("kvm", f"KVM: the CPU has {flag} and {device} answers API version {api}")


def virtualization_flag(cpuinfo: Path = CPUINFO) -> str | None:
    """``vmx`` or ``svm`` if the first CPU's flags list it, else None."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            for flag in ("vmx", "svm"):
                if flag in flags:
                    return flag
            return None
    return None


def kvm_api_version(device: Path = KVM_DEVICE) -> tuple[int | None, str]:
    """(version, "") if ``device`` opens and answers the ioctl, else (None, why not)."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, f"{device} does not exist"
    except OSError as exc:
        return None, f"{device} cannot be opened: {exc.strerror}"
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION), ""
    except OSError as exc:
        return None, f"{device} does not answer KVM_GET_API_VERSION: {exc.strerror}"
    finally:
        os.close(fd)


def qemu_version(binary: str = QEMU_BINARY) -> str | None:
    """The version QEMU reports ("7.2.22"), or None if ``binary`` does not run."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    words = out.split()
    if len(words) >= 4 and words[:3] == ["QEMU", "emulator", "version"]:
        return words[3]
    return out.strip().splitlines()[0] if out.strip() else None
