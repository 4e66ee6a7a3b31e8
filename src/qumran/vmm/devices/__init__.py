"""Emulated devices of qumran-vmm: the port-I/O bus, interrupt lines and legacy PC devices.

Devices know nothing of KVM: they see port offsets and drive :class:`IrqLine` objects that
the VMM core implements (with ``KVM_IRQ_LINE``). That keeps every device testable without
/dev/kvm.
"""

from qumran.vmm.devices.bus import PioBus, PioDevice
from qumran.vmm.devices.errors import DeviceError, PortConflict
from qumran.vmm.devices.irq import IrqLine, IrqOutput, NullIrqLine

__all__ = [
    "DeviceError",
    "IrqLine",
    "IrqOutput",
    "NullIrqLine",
    "PioBus",
    "PioDevice",
    "PortConflict",
]
