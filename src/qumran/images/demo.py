"""The demo guest: Debian's cloud kernel and a small busybox initramfs.

Used by the integration tests and by ``qumran image demo``. The guest loads the virtio
drivers, prints :data:`READY_LINE` on the serial console and gives a root shell there.
The ACPI power button (QMP ``system_powerdown``) powers it off, through the kernel's
``button`` driver, ``evdev`` and busybox ``acpid``; ``poweroff`` and ``reboot`` typed in the
shell work too, because busybox ``init`` is PID 1.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from qumran.images import initramfs, rootfs
from qumran.images.debian import DebCache, default_cache_root
from qumran.images.errors import ImageError
from qumran.images.initramfs import write_atomic
from qumran.images.kmod import ModuleTree

log = logging.getLogger(__name__)

READY_LINE = "QUMRAN-DEMO READY"
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
# `quiet` keeps the boot fast (each console byte is an exit for a VMM) and the console
# readable; the ready line is printed by user space, so it always appears.
DEFAULT_CMDLINE = "console=ttyS0 quiet panic=-1"
# virtio drivers for the usual devices, and what the ACPI power button needs to reach acpid.
MODULES = (
    "virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "virtio-rng",
    "button", "evdev",
)  # fmt: skip
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"
DEFINITION_FILE = "demo.yaml"


@dataclass(frozen=True)
class DemoImage:
    kernel: Path
    initrd: Path
    cmdline: str
    ready_line: str

    @property
    def definition(self) -> Path:
        """The VM definition written next to the images (``demo.yaml``)."""
        return self.kernel.parent / DEFINITION_FILE


def default_cache_dir() -> Path:
    return default_cache_root() / "images" / "demo"


def build_demo(
    cache_dir: Path | None = None, force: bool = False, *, debs: DebCache | None = None
) -> DemoImage:
    """Return the demo image in ``cache_dir``, building what is missing (or all, if ``force``).

    ``debs`` is where Debian packages are cached (default ``~/.cache/qumran/debs``).
    """
    target = (cache_dir if cache_dir is not None else default_cache_dir()).absolute()
    image = DemoImage(
        kernel=target / KERNEL_FILE,
        initrd=target / INITRD_FILE,
        cmdline=DEFAULT_CMDLINE,
        ready_line=READY_LINE,
    )
    definition = image.definition
    if not force and all(p.is_file() for p in (image.kernel, image.initrd, definition)):
        return image
    target.mkdir(parents=True, exist_ok=True)
    debs = debs if debs is not None else DebCache()
    kernel_root = debs.unpack(debs.resolve_kernel(KERNEL_METAPACKAGE))
    log.info("building the demo guest in %s", target)
    write_atomic(image.kernel, _find_vmlinuz(kernel_root).read_bytes())
    demo_archive(kernel_root, debs.unpack(rootfs.BUSYBOX_PACKAGE)).write_gzip(image.initrd)
    write_atomic(definition, definition_yaml(image).encode())
    return image


def demo_archive(kernel_root: Path, busybox_root: Path) -> initramfs.Archive:
    """The demo initramfs from an unpacked kernel package and busybox-static package."""
    tree = ModuleTree(kernel_root)
    modules = tree.load_order(MODULES)
    archive = initramfs.Archive(rootfs.base_entries())
    archive.extend(rootfs.busybox_entries(busybox_root))
    archive.extend(rootfs.module_entries(tree, modules))
    init = init_script(rootfs.insmod_script(tree, modules))
    archive.add(initramfs.file("init", init.encode(), 0o755))
    archive.add(initramfs.file("etc/inittab", INITTAB.encode()))
    archive.add(initramfs.file("etc/profile", PROFILE.encode()))
    # busybox acpid maps the power key to the action "PWRF/00000080" and runs that file.
    archive.add(initramfs.file("etc/acpi/PWRF/00000080", POWER_BUTTON.encode(), 0o755))
    return archive


def init_script(insmod: str) -> str:
    """``/init``: mount the kernel file systems, load drivers, start acpid, become init."""
    return _INIT_HEAD + insmod + _INIT_TAIL


_INIT_HEAD = """#!/bin/sh
# Qumran demo guest. Prepare the system, then hand PID 1 to busybox init (see /etc/inittab).
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
"""
_INIT_TAIL = """hostname demo
# The ACPI power button reaches user space as a key on /dev/input/event*: acpid turns it
# into /etc/acpi/PWRF/00000080, which powers off. Run in the foreground (-f) in a child of
# ours: daemonized, acpid changes to / and then cannot find its relative action files.
acpid -f &
exec /sbin/init
"""
# busybox init: a login shell on the serial console, restarted when it exits. Being PID 1,
# it also implements `poweroff` and `reboot` (signals from those applets).
INITTAB = """ttyS0::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
"""
# Printed by the login shell, so the shell already owns the console when a reader sees it
# and anything typed after it reaches the shell.
PROFILE = f"""export PS1='demo:\\w# '
echo {READY_LINE}
"""
POWER_BUTTON = """#!/bin/sh
exec /sbin/poweroff
"""


def definition_yaml(image: DemoImage) -> str:
    """The demo VM definition (the schema belongs to ``qumran.config``)."""
    # JSON strings are YAML strings: quoting this way is always valid.
    return (
        "name: demo\n"
        "memory: 256M\n"
        "vcpus: 1\n"
        "boot:\n"
        f"  kernel: {json.dumps(str(image.kernel))}\n"
        f"  initrd: {json.dumps(str(image.initrd))}\n"
        f"  cmdline: {json.dumps(image.cmdline)}\n"
    )


def _find_vmlinuz(kernel_root: Path) -> Path:
    found = sorted((kernel_root / "boot").glob("vmlinuz-*"))
    if not found:
        raise ImageError(f"no boot/vmlinuz-* in {kernel_root}")
    return found[-1]
