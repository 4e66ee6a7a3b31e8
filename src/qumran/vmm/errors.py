"""Errors of qumran-vmm.

Each is one line a person can act on; ``main`` prints it and exits non-zero. Device code
(``qumran.vmm.devices``) derives its own errors from :class:`VmmError`.
"""

from __future__ import annotations

from qumran.errors import HypervisorError, InvalidArgument


class VmmError(HypervisorError):
    """Base of every qumran-vmm error."""

    code = "vmm-error"


class BadKernel(VmmError, InvalidArgument):
    """The kernel image is not a bzImage this VMM can boot."""

    code = "bad-kernel"


class GuestTooLarge(VmmError, InvalidArgument):
    """The kernel, initrd or command line do not fit in the guest's memory."""

    code = "guest-too-large"


class NoHardwareVirt(VmmError):
    """The host CPU shows no VMX/SVM: /dev/kvm cannot boot a stock kernel here."""

    code = "no-hardware-virtualization"


class GuestCrashed(VmmError):
    """The guest stopped in a way it cannot recover from (triple fault, KVM error)."""

    code = "guest-crashed"
