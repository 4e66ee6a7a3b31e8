"""Errors of the /dev/kvm layer.

Every failing ioctl is translated at the boundary (:mod:`qumran.kvm.system`) into a
:class:`KvmError` that names the operation and carries the errno, so callers never see a
bare ``OSError`` from KVM.
"""

from __future__ import annotations

import errno as errno_mod
import os

from qumran.errors import HypervisorError


class KvmError(HypervisorError):
    """An operation on /dev/kvm or on a VM/vCPU fd failed."""

    code = "kvm-error"

    def __init__(self, operation: str, errno: int | None = None, detail: str = "") -> None:
        reason = os.strerror(errno) if errno is not None else ""
        name = errno_mod.errorcode.get(errno, "") if errno is not None else ""
        text = f"{operation} failed"
        if reason:
            text += f": {reason}" + (f" ({name})" if name else "")
        if detail:
            text += f"; {detail}"
        super().__init__(text)
        self.operation = operation
        self.errno = errno


class KvmUnavailable(KvmError):
    """/dev/kvm is missing, not accessible, or speaks an unknown API version."""

    code = "kvm-unavailable"
