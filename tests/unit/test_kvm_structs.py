"""The ctypes ABI matches the kernel headers: sizes, offsets and ioctl numbers."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from qumran.kvm import constants as k
from qumran.kvm import structs as s
from qumran.kvm.ioctl import ioc, iow

HEADER = Path("/usr/include/linux/kvm.h")
IOCTLS = [
    name
    for name in dir(k)
    if name.startswith("KVM_")
    and name not in {"KVM_API_VERSION", "KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT"}
    and name not in {"KVM_PIT_SPEAKER_DUMMY", "KVM_MEM_READONLY"}
]


def test_sizes_match_the_recorded_kernel_sizes() -> None:
    for struct, size in s.KERNEL_SIZES.items():
        assert ctypes.sizeof(struct) == size, struct.__name__


def test_kvm_run_layout() -> None:
    assert s.kvm_run.exit_reason.offset == 8
    assert s.kvm_run.exit.offset == 32
    assert s.kvm_run_io.data_offset.offset == 8
    assert s.kvm_run.kvm_valid_regs.offset == 32 + 256


def test_flexible_arrays_grow_by_whole_entries() -> None:
    assert ctypes.sizeof(s.cpuid2_type(3)) == 8 + 3 * 40
    assert ctypes.sizeof(s.msrs_type(2)) == 8 + 2 * 16
    assert ctypes.sizeof(s.msr_list_type(5)) == 4 + 5 * 4


def test_ioctl_encoding_by_hand() -> None:
    # KVM_SET_USER_MEMORY_REGION = _IOW(0xAE, 0x46, 32 bytes): dir 1 << 30, size 32 << 16.
    assert iow(0xAE, 0x46, s.kvm_userspace_memory_region) == (1 << 30) | (32 << 16) | 0xAE46
    assert k.KVM_RUN == 0xAE80
    with pytest.raises(ValueError):
        ioc(1, 0xAE, 1, 1 << 14)


def _compile_and_run(tmp_path: Path, body: str) -> dict[str, int]:
    source = tmp_path / "probe.c"
    source.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\n"
        f"int main(void) {{\n{body}\nreturn 0; }}\n"
    )
    binary = tmp_path / "probe"
    subprocess.run(["cc", "-o", str(binary), str(source)], check=True)
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None or not HEADER.exists(), reason="needs cc and linux/kvm.h"
)


@needs_cc
def test_sizes_against_the_installed_headers(tmp_path: Path) -> None:
    names = [st.__name__ for st in s.KERNEL_SIZES]
    body = "\n".join(f'printf("{n} %zu\\n", sizeof(struct {n}));' for n in names)
    kernel = _compile_and_run(tmp_path, body)
    assert {st.__name__: ctypes.sizeof(st) for st in s.KERNEL_SIZES} == kernel


@needs_cc
def test_ioctl_numbers_against_the_installed_headers(tmp_path: Path) -> None:
    body = "\n".join(f'printf("{n} %lu\\n", (unsigned long){n});' for n in IOCTLS)
    kernel = _compile_and_run(tmp_path, body)
    assert {n: getattr(k, n) for n in IOCTLS} == kernel
