"""qumran-vmm keeps heavy modules off its path: each costs every VM process resident memory
(asyncio with ssl ~10 MiB; secrets with hmac and libcrypto ~4 MiB; logging, dataclasses +
inspect, typing, pathlib, argparse's shutil, subprocess, calendar up to ~1.5 MiB each; the
VMM's whole budget next to QEMU is ~12 MiB, see BENCHMARKS.md) and start-up time, with or
without virtio devices. Only a real process shows what it imports."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

HEAVY = (
    "asyncio", "ssl", "logging", "dataclasses", "inspect", "ast", "typing", "pathlib",
    "shutil", "calendar", "datetime", "email", "urllib", "tempfile", "traceback", "argparse",
    "gettext", "locale",
    "secrets", "hashlib", "_hashlib", "hmac", "random", "subprocess", "selectors",
    "socket",  # socket.py and its enums; ``_socket`` is what the VMM uses
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


def imported_by_vmm(
    tmp_path: Path, *extra: str, fails_at: str | None = None, env: dict[str, str] | None = None
) -> tuple[set[str], str]:
    """Run qumran-vmm up to opening /dev/kvm (a path that does not exist here): argument
    parsing, consoles, sockets, kernel and initrd checks and the devices' host side all
    happen for real. A device may stop it earlier, at ``fails_at`` in its error."""
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
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
        env=env,
    )  # fmt: skip
    lines = proc.stderr.splitlines()
    imported = {ln.split("|")[-1].strip() for ln in lines if ln.startswith("import time:")}
    errors = "\n".join(ln for ln in lines if not ln.startswith("import time:"))
    assert proc.returncode == 1, errors
    if fails_at is None:
        assert "/dev/kvm" in errors or "no-kvm" in errors, errors  # it got as far as KVM
    else:
        assert fails_at in errors, errors  # it got as far as that device
    assert "qumran.vmm.control" in imported  # the report is real
    return imported, errors


def _heavy(imported: set[str], names: tuple[str, ...]) -> set[str]:
    return {m for m in imported if any(m == n or m.startswith(n + ".") for n in names)}


def test_the_vmm_imports_nothing_heavy(tmp_path: Path) -> None:
    imported, _ = imported_by_vmm(tmp_path)
    assert _heavy(imported, HEAVY) == set()
    assert _heavy(imported, VIRTIO) == set()


def fake_passt(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH starts with a ``passt`` that exits 0 at once, as the real
    one does once its background copy runs: the VMM starts it as it would passt."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    passt = bindir / "passt"
    passt.write_text("#!/bin/sh\nexit 0\n")
    passt.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_virtio_devices_bring_their_own_stack_and_still_nothing_heavy(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    imported, _ = imported_by_vmm(
        tmp_path, "--disk", str(disk), "--rng", "--net", "passt,forward=tcp:127.0.0.1:2222-:22",
        env=fake_passt(tmp_path),
    )  # fmt: skip
    virtio = "qumran.vmm.devices.virtio."
    assert {virtio + m for m in ("blk", "iopool", "rng", "net", "tap", "passt")} <= imported
    assert _heavy(imported, HEAVY) == set()


def test_a_tap_nic_with_vhost_net_and_still_nothing_heavy(tmp_path: Path) -> None:
    # /dev/null as the vhost-net fd: refused once the TAP and vhost modules are in.
    imported, _ = imported_by_vmm(
        tmp_path, "--net", "fd=0,vhost=on,vhostfd=0", fails_at="vhostfd=0 refused this process"
    )
    virtio = "qumran.vmm.devices.virtio."
    assert {virtio + m for m in ("net", "tap", "vhost")} <= imported
    assert _heavy(imported, HEAVY) == set()


def test_a_vhost_user_disk_and_still_nothing_heavy(tmp_path: Path) -> None:
    # The back end is connected before KVM is opened; with nobody there, it stops at that.
    sock = tmp_path / "nobody.sock"
    imported, _ = imported_by_vmm(tmp_path, "--disk", f"vhost-user={sock}",
                                  fails_at=f"cannot connect to {sock}")  # fmt: skip
    virtio = "qumran.vmm.devices.virtio."
    assert {virtio + "vhost_user_blk", virtio + "vhost_user"} <= imported
    assert _heavy(imported, HEAVY) == set()


def test_what_a_boot_with_virtio_devices_loads_is_light_too() -> None:
    """Past /dev/kvm, a boot loads the PCI transport, and the device threads their seccomp
    lists: imported here as the boot does."""
    code = ("import sys, qumran.vmm.main, qumran.vmm.devices.pci.system,"
            " qumran.vmm.devices.virtio.backends, qumran.vmm.devices.virtio.passt,"
            " qumran.vmm.devices.virtio.vhost_user_blk, qumran.vmm.devices.virtio.vhost,"
            " qumran.vmm.syscalls; print(*sys.modules)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    imported = set(proc.stdout.split())
    assert "qumran.vmm.devices.pci.virtio_pci" in imported
    assert _heavy(imported, HEAVY) == set()
