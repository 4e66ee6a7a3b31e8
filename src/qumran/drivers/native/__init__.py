"""The native driver: qumran-vmm processes driven over their JSON control socket."""

from qumran.drivers.native.driver import NativeDriver, NativeInstance

__all__ = ["NativeDriver", "NativeInstance"]
