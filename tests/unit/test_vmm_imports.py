"""qumran-vmm keeps heavy modules off its path: each costs every VM process resident memory
(asyncio with ssl ~10 MiB; logging, dataclasses + inspect, typing, pathlib, argparse's
shutil, calendar ~0.5-1.5 MiB each; the VMM's whole budget next to QEMU is ~12 MiB, see
BENCHMARKS.md) and start-up time. Only a real process shows what it imports."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

HEAVY = (
    "asyncio", "ssl", "logging", "dataclasses", "inspect", "ast", "typing", "pathlib",
    "shutil", "calendar", "datetime", "email", "urllib", "tempfile", "traceback", "argparse",
    "gettext", "locale",
    "qumran.config", "pydantic", "yaml",
)  # fmt: skip
# Only a machine with virtio devices loads the virtio stack and its I/O thread.
VIRTIO = ("qumran.vmm.devices.virtio", "qumran.vmm.devices.pci")


def fake_bzimage() -> bytes:
    """A 64-bit bzImage header (boot protocol 2.15) with a few bytes of payload."""
    image = bytearray(4096)
    image[0x1F1] = 1  # setup_sects
    struct.pack_into("<H", image, 0x1FE, 0xAA55)
    image[0x201] = 0x66
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x020F)
    struct.pack_into("<I", image, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
    struct.pack_into("<H", image, 0x236, 1)  # XLF_KERNEL_64
    struct.pack_into("<I", image, 0x238, 2047)  # cmdline_size
    struct.pack_into("<Q", image, 0x258, 16 << 20)  # pref_address
    struct.pack_into("<I", image, 0x260, 32 << 20)  # init_size
    return bytes(image)


def imported_by_vmm(tmp_path: Path, *extra: str) -> tuple[set[str], str]:
    """Run qumran-vmm up to opening /dev/kvm (a path that does not exist here): argument
    parsing, consoles, sockets, kernel and initrd checks all happen for real."""
    kernel, initrd = tmp_path / "bzImage", tmp_path / "initrd"
    kernel.write_bytes(fake_bzimage())
    initrd.write_bytes(bytes(1000))
    argv = ["--name", "imports", "--kernel", str(kernel), "--initrd", str(initrd),
            "--memory", "128M", "--console", f"socket:{tmp_path}/con.sock",
            "--control", f"{tmp_path}/ctl.sock", "--force-kvm",
            "--kvm-device", str(tmp_path / "no-kvm"), *extra]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c",
         "import sys; from qumran.vmm.main import main; sys.exit(main(sys.argv[1:]))", *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    lines = proc.stderr.splitlines()
    imported = {ln.split("|")[-1].strip() for ln in lines if ln.startswith("import time:")}
    errors = "\n".join(ln for ln in lines if not ln.startswith("import time:"))
    assert proc.returncode == 1, errors
    assert "/dev/kvm" in errors or "no-kvm" in errors, errors  # it got as far as KVM
    assert "qumran.vmm.control" in imported  # the report is real
    return imported, errors


def _heavy(imported: set[str], names: tuple[str, ...]) -> set[str]:
    return {m for m in imported if any(m == n or m.startswith(n + ".") for n in names)}


def test_the_vmm_imports_nothing_heavy(tmp_path: Path) -> None:
    imported, _ = imported_by_vmm(tmp_path)
    assert _heavy(imported, HEAVY) == set()
    assert _heavy(imported, VIRTIO) == set()


def test_virtio_devices_bring_their_own_stack_and_still_nothing_heavy(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    imported, _ = imported_by_vmm(tmp_path, "--disk", str(disk), "--rng")
    assert "qumran.vmm.devices.virtio.blk" in imported
    # The virtio modules are other work's to slim; the process-level ones stay out.
    assert _heavy(imported, ("asyncio", "ssl", "logging", "pathlib", "shutil")) == set()
