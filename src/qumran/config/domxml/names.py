"""Names both directions of domain XML share."""

from __future__ import annotations

NS = "https://qumran.dev/xmlns/libvirt/domain/1.0"  # Qumran's own elements, in <metadata>
Q = f"{{{NS}}}"
MAX_XML = 1 << 20  # bytes; a domain is a few KiB
QEMU_BINARY_NAMES = ("qemu-system-x86_64", "kvm")
MACHINE = "q35"  # the machine type QEMU runs a Qumran VM as (drivers/qemu/cmdline.py)
