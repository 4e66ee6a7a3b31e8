"""MSI vectors on KVM: one irqfd per vector, the whole routing table re-sent on changes."""

from __future__ import annotations

import os

from qumran.kvm import constants as k
from qumran.kvm import structs as s
from qumran.vmm.devices.pci.kvm_routes import FIRST_MSI_GSI, KvmDoorbells, KvmMsiRouter
from qumran.vmm.devices.pci.msix import CTRL_ENABLE, CTRL_FUNCTION_MASK, MsixTable


class RecordingVm:
    """Stands in for qumran.kvm.Vm: records the ioctls the router would make."""

    def __init__(self) -> None:
        self.irqfds: list[tuple[int, int]] = []
        self.tables: list[list[s.kvm_irq_routing_entry]] = []
        self.ioeventfds: list[tuple[int, int, int, int]] = []

    def irqfd(self, fd: int, gsi: int, flags: int = 0) -> None:
        self.irqfds.append((fd, gsi))

    def set_gsi_routing(self, entries: list[s.kvm_irq_routing_entry]) -> None:
        self.tables.append(entries)

    def ioeventfd(self, fd: int, addr: int, length: int, flags: int = 0) -> None:
        self.ioeventfds.append((fd, addr, length, flags))


def test_vectors_get_consecutive_gsis_after_the_ioapic_and_fire_through_eventfds() -> None:
    vm = RecordingVm()
    router = KvmMsiRouter(vm)  # type: ignore[arg-type]
    a, b = router.vectors(2), router.vectors(1)
    assert [g for _, g in vm.irqfds] == [FIRST_MSI_GSI, FIRST_MSI_GSI + 1, FIRST_MSI_GSI + 2]
    b.route(0, 0xFEE0_1000, 0x4021)
    a.route(1, 0xFEE0_0000, 0x4022)
    table = vm.tables[-1]
    msi = [(e.gsi, e.u.msi.address_lo, e.u.msi.data) for e in table
           if e.type == k.KVM_IRQ_ROUTING_MSI]  # fmt: skip
    assert msi == [(25, 0xFEE0_0000, 0x4022), (26, 0xFEE0_1000, 0x4021)]
    assert len(table) == 40 + 2  # the irqchip defaults are always part of the table
    a.trigger(1)
    assert os.eventfd_read(vm.irqfds[1][0]) == 1
    router.close()


def test_doorbells_assign_and_deassign() -> None:
    vm = RecordingVm()
    bells = KvmDoorbells(vm)  # type: ignore[arg-type]
    bells.bind(0xC000_B000, 2, 7)
    bells.unbind(0xC000_B000, 2, 7)
    assert vm.ioeventfds == [
        (7, 0xC000_B000, 2, 0),
        (7, 0xC000_B000, 2, k.KVM_IOEVENTFD_FLAG_DEASSIGN),
    ]


class _Sink:
    def __init__(self) -> None:
        self.routes: dict[int, tuple[int, int]] = {}
        self.fired: list[int] = []

    def route(self, index: int, address: int, data: int) -> None:
        self.routes[index] = (address, data)

    def trigger(self, index: int) -> None:
        assert index in self.routes, "an interrupt fired through a vector with no route"
        self.fired.append(index)


def _program(table: MsixTable, index: int, address: int, data: int, masked: bool) -> None:
    table.write_table(16 * index, 8, address)
    table.write_table(16 * index + 8, 4, data)
    table.write_table(16 * index + 12, 4, int(masked))


def test_msix_vector_written_under_the_function_mask_is_routed_when_it_clears() -> None:
    """Linux programs the table with Function Mask set, then clears it (PCI 3.0, 6.8.2.3):
    a vector that fires must have its route by then, whether it fired under the mask
    (held as pending) or not."""
    sink = _Sink()
    table = MsixTable(3, sink)
    table.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK)
    _program(table, 0, 0xFEE0_0000, 0x40, masked=False)
    _program(table, 1, 0xFEE0_0000, 0x41, masked=False)
    assert table.signal(1) and sink.fired == [] and table.pending == 2  # held while masked
    table.set_control(CTRL_ENABLE)
    assert sink.routes == {0: (0xFEE0_0000, 0x40), 1: (0xFEE0_0000, 0x41)}
    assert sink.fired == [1] and table.pending == 0
    assert table.signal(0) and table.signal(1) and sink.fired == [1, 0, 1]
    _program(table, 1, 0xFEE0_1000, 0x42, masked=False)  # moved while live: routed again
    assert sink.routes[1] == (0xFEE0_1000, 0x42)
    assert table.signal(2) and sink.fired == [1, 0, 1] and table.pending == 4  # 2 is masked
