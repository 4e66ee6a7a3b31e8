"""Checks every driver makes before it launches anything: the files a spec names."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from qumran.config.spec import KernelBoot, VmSpec
from qumran.errors import InvalidArgument


def check_files(spec: VmSpec) -> None:
    """Raise InvalidArgument naming the field if a kernel, initrd or disk is unusable."""
    files: list[tuple[str, Path]] = []
    if isinstance(spec.boot, KernelBoot):
        files.append(("boot.kernel", spec.boot.kernel))
        if spec.boot.initrd is not None:
            files.append(("boot.initrd", spec.boot.initrd))
    files += [(f"disks[{i}].path", disk.path) for i, disk in enumerate(spec.disks)]
    for field, path in files:
        check_file(field, path)
    for i, disk in enumerate(spec.disks):
        if not disk.readonly and not os.access(disk.path, os.W_OK):
            raise InvalidArgument(f"disks[{i}].path: {disk.path} is not writable (readonly: true?)")


def check_file(field: str, path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise InvalidArgument(f"{field}: {path} does not exist") from None
    except OSError as exc:  # a name over the length limit, a loop of links, ...
        raise InvalidArgument(f"{field}: {path} cannot be used: {exc.strerror}") from None
    if not stat.S_ISREG(mode) and not stat.S_ISBLK(mode):
        raise InvalidArgument(f"{field}: {path} is not a file")
    if not os.access(path, os.R_OK):
        raise InvalidArgument(f"{field}: {path} is not readable")
