"""Errors raised while wiring up emulated devices.

Guest accesses never raise: a device answers any port, size and value the guest throws at
it. These errors are for the VMM's own set-up mistakes, caught before the guest runs.
"""

from __future__ import annotations

from qumran.vmm.errors import VmmError


class DeviceError(VmmError):
    """A device could not be set up as asked."""

    code = "device-error"


class PortConflict(DeviceError, ValueError):
    """Two devices claim the same I/O port, or a range falls outside the 64 KiB port space.

    Also a ValueError, as the VMM contract promises for overlapping registrations.
    """

    code = "port-conflict"
