"""The QEMU driver: ``qemu-system-x86_64`` processes driven over QMP.

``cmdline`` turns a VmSpec into argv, ``accel`` picks KVM or TCG, ``monitor`` holds the QMP
session, ``instance`` is the daemon's grip on one process and ``driver`` launches and
re-attaches them.
"""

from qumran.drivers.qemu.driver import QemuDriver
from qumran.drivers.qemu.instance import QemuInstance

__all__ = ["QemuDriver", "QemuInstance"]
