"""PCI interrupts and doorbells on KVM: irqfd + GSI routes for MSI-X, ioeventfd for notify.

KVM_SET_GSI_ROUTING replaces the whole routing table, including the default routes of the
in-kernel PIC and IOAPIC that KVM_CREATE_IRQCHIP installed, so the table we install
starts with the same defaults (virt/kvm/irqchip.c and arch/x86/kvm/irq_comm.c
``default_routing``: GSI 0-15 on both PICs and the IOAPIC, 16-23 on the IOAPIC only) and
appends one MSI route per vector. Each vector has an eventfd bound with KVM_IRQFD to its
GSI, so the device I/O thread raises an MSI with one ``eventfd_write`` (api.rst, KVM_IRQFD:
an irqfd whose GSI has no route yet is simply inactive until the route appears).
"""

from __future__ import annotations

import os
import threading

from qumran.kvm import Vm
from qumran.kvm import constants as k
from qumran.kvm import structs as s

IOAPIC_PINS = 24
FIRST_MSI_GSI = IOAPIC_PINS


def default_routes() -> list[s.kvm_irq_routing_entry]:
    entries = []
    for gsi in range(IOAPIC_PINS):
        entries.append(_irqchip(gsi, k.KVM_IRQCHIP_IOAPIC, gsi))
        if gsi < 16:
            chip = k.KVM_IRQCHIP_PIC_MASTER if gsi < 8 else k.KVM_IRQCHIP_PIC_SLAVE
            entries.append(_irqchip(gsi, chip, gsi % 8))
    return entries


def _irqchip(gsi: int, chip: int, pin: int) -> s.kvm_irq_routing_entry:
    e = s.kvm_irq_routing_entry(gsi=gsi, type=k.KVM_IRQ_ROUTING_IRQCHIP)
    e.u.irqchip.irqchip, e.u.irqchip.pin = chip, pin
    return e


def _msi(gsi: int, address: int, data: int) -> s.kvm_irq_routing_entry:
    e = s.kvm_irq_routing_entry(gsi=gsi, type=k.KVM_IRQ_ROUTING_MSI)
    e.u.msi.address_lo, e.u.msi.address_hi = address & 0xFFFF_FFFF, address >> 32
    e.u.msi.data = data
    return e


class KvmMsiRouter:
    """Owns the VM's GSI routing table and hands out irqfd-backed MSI vectors."""

    def __init__(self, vm: Vm) -> None:
        self._vm = vm
        self._lock = threading.Lock()
        self._next_gsi = FIRST_MSI_GSI
        self._msi: dict[int, tuple[int, int]] = {}
        self._fds: list[int] = []

    def vectors(self, count: int) -> KvmMsiVectors:
        gsis, fds = [], []
        with self._lock:
            for _ in range(count):
                fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._fds.append(fd)
                self._vm.irqfd(fd, self._next_gsi)
                gsis.append(self._next_gsi)
                fds.append(fd)
                self._next_gsi += 1
        return KvmMsiVectors(self, gsis, fds)

    def set_route(self, gsi: int, address: int, data: int) -> None:
        with self._lock:
            self._msi[gsi] = (address, data)
            table = default_routes() + [_msi(g, a, d) for g, (a, d) in sorted(self._msi.items())]
            self._vm.set_gsi_routing(table)

    def close(self) -> None:
        """Close the eventfds (the VM fd going away drops the irqfds)."""
        with self._lock:
            fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)


class KvmMsiVectors:
    """One device's vectors: an :class:`~qumran.vmm.devices.pci.msix.MsiSink`."""

    def __init__(self, router: KvmMsiRouter, gsis: list[int], fds: list[int]) -> None:
        self._router, self._gsis, self._fds = router, gsis, fds

    def route(self, index: int, address: int, data: int) -> None:
        self._router.set_route(self._gsis[index], address, data)

    def trigger(self, index: int) -> None:
        os.eventfd_write(self._fds[index], 1)

    def eventfd(self, index: int) -> int | None:
        return self._fds[index]


class KvmDoorbells:
    """Queue-notify addresses bound to eventfds with KVM_IOEVENTFD (MMIO, any value)."""

    def __init__(self, vm: Vm) -> None:
        self._vm = vm

    def bind(self, addr: int, length: int, fd: int) -> None:
        self._vm.ioeventfd(fd, addr, length)

    def unbind(self, addr: int, length: int, fd: int) -> None:
        self._vm.ioeventfd(fd, addr, length, k.KVM_IOEVENTFD_FLAG_DEASSIGN)
