"""Building blocks shared by Qumran's busybox initramfs images.

Each helper returns archive entries; an image module (``demo``, the KVM test host) adds its
own ``/init`` and configuration on top.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from qumran.images import initramfs
from qumran.images.errors import ImageError
from qumran.images.initramfs import Entry
from qumran.images.kmod import Module, ModuleTree

BUSYBOX_PACKAGE = "busybox-static"


def busybox_entries(package_root: Path) -> list[Entry]:
    """The static busybox binary at ``/bin/busybox`` and a symlink per applet.

    The applet list comes from the binary itself (``--list-full`` prints each applet with
    its usual directory, e.g. ``sbin/acpid``), so it always matches the package.
    """
    binary = package_root / "bin" / "busybox"
    if not binary.is_file():
        raise ImageError(f"{binary} is missing: is {package_root} an unpacked busybox-static?")
    listing = subprocess.run(
        [str(binary), "--list-full"], capture_output=True, text=True, check=False
    )
    if listing.returncode != 0:
        raise ImageError(f"{binary} --list-full failed: {listing.stderr.strip()}")
    entries = [initramfs.file("bin/busybox", binary.read_bytes(), 0o755)]
    for applet in listing.stdout.split():
        if applet.strip("/") != "bin/busybox":
            entries.append(initramfs.symlink(applet, "/bin/busybox"))
    return entries


def base_entries() -> list[Entry]:
    """Mount points and the initial console.

    The kernel opens ``/dev/console`` for ``/init`` before any devtmpfs exists
    (``init/main.c: console_on_rootfs``), so the node must be in the archive.
    """
    dirs = ["dev", "proc", "sys", "tmp", "run", "root", "etc", "mnt", "var/log"]
    return [initramfs.directory(d) for d in dirs] + [initramfs.chardev("dev/console", 5, 1)]


def module_entries(tree: ModuleTree, modules: list[Module]) -> list[Entry]:
    """The ``.ko`` files of ``modules`` at their usual paths under ``/lib/modules``."""
    entries = []
    for mod in modules:
        rel = mod.path.relative_to(tree.base)
        entries.append(initramfs.file(f"lib/modules/{tree.version}/{rel}", mod.path.read_bytes()))
    return entries


def insmod_script(tree: ModuleTree, modules: list[Module]) -> str:
    """Shell lines loading ``modules`` in order; a module that fails to load is reported."""
    lines = []
    for mod in modules:
        path = shlex.quote(f"/lib/modules/{tree.version}/{mod.path.relative_to(tree.base)}")
        lines.append(f"insmod {path} || echo 'qumran: cannot load {mod.name}' >&2")
    return "\n".join(lines) + "\n"
