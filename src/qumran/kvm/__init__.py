"""The /dev/kvm ABI: ctypes structures, derived ioctl numbers, thin Kvm/Vm/Vcpu objects.

Standard library only, and no policy: what to put in the registers, tables and memory
is the VMM's business (:mod:`qumran.vmm`).
"""

from qumran.kvm.errors import KvmError, KvmUnavailable
from qumran.kvm.system import Kvm, Vcpu, Vm

__all__ = ["Kvm", "KvmError", "KvmUnavailable", "Vcpu", "Vm"]
