"""Checks every driver makes before it launches anything: the files a spec names.

Each kernel, initrd and disk is opened the way the hypervisor will use it (read-only, or
read-write for a writable disk) with the rights of the VM's owner, not the daemon's
(:mod:`qumran.drivers.asuser`), and what was opened must be a regular file or a block
device. A file that is missing and one the owner may not open get the same answer, so
the answer tells nothing about folders the owner cannot read.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from qumran.config.spec import KernelBoot, VmSpec
from qumran.drivers.asuser import effective_uid, run_as
from qumran.drivers.base import Owner
from qumran.errors import InvalidArgument

# Errors that mean "not there, or not yours": one answer for all of them. (ENOTDIR and
# ELOOP too: they come from a path component, which says as much as "missing".)
UNSEEN_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ELOOP}


@dataclass(frozen=True)
class _File:
    field: str
    path: Path
    writable: bool


def check_files(spec: VmSpec, owner: Owner) -> None:
    """Raise InvalidArgument naming the field if a kernel, initrd or disk is unusable
    to ``owner``."""
    files: list[_File] = []
    if isinstance(spec.boot, KernelBoot):
        files.append(_File("boot.kernel", spec.boot.kernel, False))
        if spec.boot.initrd is not None:
            files.append(_File("boot.initrd", spec.boot.initrd, False))
    files += [
        _File(f"disks[{i}].path", disk.host_path, not disk.readonly)
        for i, disk in enumerate(spec.disks)
    ]
    if not files:
        return
    # One hand-off for all files: the opens run with the owner's rights.
    results = run_as(owner.uid, owner.gid, lambda: [_probe(f) for f in files])
    uid = effective_uid(owner.uid)
    for file, result in zip(files, results, strict=True):
        _judge(file, result, uid)


def _probe(file: _File) -> int | OSError:
    """The opened file's st_mode, or the error opening it. Runs as the owner: opens,
    fstats and closes, nothing else. O_NONBLOCK so a FIFO cannot hang the daemon."""
    flags = os.O_RDWR if file.writable else os.O_RDONLY
    try:
        fd = os.open(file.path, flags | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return exc
    try:
        return os.fstat(fd).st_mode
    finally:
        os.close(fd)


def refused_open(
    where: str, error: OSError, uid: int, access: str = "read", hint: str = ""
) -> InvalidArgument:
    """The one line for a file the owner could not open (an open through
    :func:`run_as`): the same answer for one that is missing and one that is not theirs."""
    if error.errno in UNSEEN_ERRNOS:
        return InvalidArgument(
            f"{where} cannot be opened by uid {uid} (missing, or no permission); "
            f"check the path, and that uid {uid} may {access} it{hint}"
        )
    return InvalidArgument(f"{where} cannot be opened by uid {uid}: {error.strerror}")


def _judge(file: _File, result: int | OSError, uid: int) -> None:
    where = f"{file.field}: {_show(file.path)}"
    access = "read and write" if file.writable else "read"
    if isinstance(result, OSError):
        if result.errno == errno.EROFS:
            raise InvalidArgument(f"{where} is on a read-only file system; set readonly: true")
        hint = " (or set readonly: true)" if file.writable else ""
        raise refused_open(where, result, uid, access, hint)
    if not stat.S_ISREG(result) and not stat.S_ISBLK(result):
        raise InvalidArgument(f"{where} is not a regular file or block device")


def _show(path: Path) -> str:
    text = str(path)
    return text if text.isprintable() else repr(text)


def host_memory_mib() -> int | None:
    """The host's RAM (MemTotal), or None if /proc/meminfo does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) >> 10  # the kernel counts kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(spec: VmSpec, *, force: bool = False) -> None:
    """Refuse more memory than the host has, unless ``force``: such a VM could only
    start by overcommitting, and is more likely a typo (2048G for 2048M)."""
    total = host_memory_mib()
    if force or total is None or spec.memory <= total:
        return
    raise InvalidArgument(
        f"memory: {spec.memory} MiB is more than this host's {total} MiB of RAM; give less, "
        "or define with --force (POST /v1/vms?force=true) to allow it"
    )
