"""Host programs the image code runs, and the Debian packages that provide them.

A build checks all of its tools before it starts, so a missing one is one line naming the
packages to install, not a failure half-way through a ten-minute build.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from qumran.images.errors import MissingTools

# Program (or file) -> the Debian 12 package that ships it.
PACKAGES: dict[str, str] = {
    "mmdebstrap": "mmdebstrap",
    "mke2fs": "e2fsprogs",
    "sfdisk": "fdisk",
    "grub-mkimage": "grub-common",
    "qemu-img": "qemu-utils",
    "tar": "tar",
    "newuidmap": "uidmap",
    "unshare": "util-linux",
    "sh": "dash",
}
GRUB_PC_DIR = Path("/usr/lib/grub/i386-pc")
GRUB_PC_PACKAGE = "grub-pc-bin"
# Without root, user namespaces map the build's users through newuidmap (qumran.images.userns).
ROOTLESS_TOOLS = ("newuidmap", "unshare")
BUILD_TOOLS = ("mmdebstrap", "tar", "mke2fs", "sfdisk", "grub-mkimage", "qemu-img")
IMPORT_TOOLS = ("qemu-img",)


def find(tool: str) -> str | None:
    """The tool's path, looking in the sbin directories too (mke2fs is in /usr/sbin)."""
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(tool, path=path)


def missing(tools: Iterable[str], *, grub_pc: bool = False) -> list[str]:
    """The Debian packages to install for ``tools`` (and GRUB's BIOS images), sorted."""
    packages = {PACKAGES[t] for t in tools if find(t) is None}
    if grub_pc and not (GRUB_PC_DIR / "boot.img").is_file():
        packages.add(GRUB_PC_PACKAGE)
    return sorted(packages)


def require(tools: Iterable[str], what: str, *, grub_pc: bool = False) -> None:
    """Raise :class:`MissingTools` naming every package ``what`` still needs."""
    tools = list(tools)
    if os.geteuid() != 0:
        tools += ROOTLESS_TOOLS
    packages = missing(tools, grub_pc=grub_pc)
    if packages:
        raise MissingTools(
            f"{what} needs programs this host lacks: install them with "
            f"`apt-get install {' '.join(packages)}`"
        )


def program(tool: str) -> str:
    """The path of ``tool``, or :class:`MissingTools` naming its package."""
    path = find(tool)
    if path is None:
        raise MissingTools(
            f"{tool} is not installed: install it with `apt-get install {PACKAGES.get(tool, tool)}`"
        )
    return path
