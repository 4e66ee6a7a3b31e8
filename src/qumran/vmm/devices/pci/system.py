"""PCI for one boot: the host on 0xCF8, one virtio-pci function per device, the device I/O
loop and the KVM plumbing (irqfd/GSI routes for MSI-X, ioeventfd doorbells, INTx lines)."""

from __future__ import annotations

from collections.abc import Callable

from qumran.kvm import Vm
from qumran.vmm.acpi.constants import PCI_MMIO_BASE, PCI_MMIO_END, pci_intx_gsi
from qumran.vmm.devices.bus import PioBus
from qumran.vmm.devices.irq import IrqLine
from qumran.vmm.devices.pci.host import PCI_CONFIG_BASE, PCI_CONFIG_PORTS, PciHost
from qumran.vmm.devices.pci.kvm_routes import KvmDoorbells, KvmMsiRouter
from qumran.vmm.devices.pci.virtio_pci import BAR_SIZE, VirtioPciDevice
from qumran.vmm.devices.virtio.device import VirtioDevice
from qumran.vmm.devices.virtio.ioloop import IoLoop
from qumran.vmm.devices.virtio.queue import RamViews
from qumran.vmm.log import get_logger
from qumran.vmm.memory import GuestMemory

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = get_logger(__name__)


class PciSystem:
    def __init__(self, host: PciHost, loop: IoLoop, router: KvmMsiRouter, ram: RamViews) -> None:
        self.host, self.loop, self._router, self._ram = host, loop, router, ram
        self.functions: list[VirtioPciDevice] = []

    def mmio_read(self, addr: int, length: int) -> bytes:
        return self.host.mmio_read(addr, length)

    def mmio_write(self, addr: int, data: bytes) -> None:
        self.host.mmio_write(addr, data)

    def status(self) -> list[dict[str, Any]]:
        return [f.report() for f in self.functions]

    def park(self) -> Callable[[], None]:
        """Hold the device I/O thread still; call the result to let it go."""
        return self.loop.park()

    def unsnapshottable(self) -> list[str]:
        """The devices whose state a snapshot cannot take (yet), by name."""
        return [f.device.name for f in self.functions if not f.device.snapshottable]

    def save_state(self) -> dict[str, Any]:
        """Caller paused the vCPUs and parked :attr:`loop`."""
        functions = [f.save_state() for f in self.functions]
        return {"host": self.host.save_state(), "functions": functions}

    def load_state(self, state: dict[str, Any]) -> None:
        functions = state["functions"]
        if len(functions) != len(self.functions):
            raise ValueError(f"{len(functions)} PCI devices saved, {len(self.functions)} made")
        self.host.load_state(state["host"])
        for function, saved in zip(self.functions, functions, strict=True):
            function.load_state(saved)

    def stop(self) -> None:
        """Stop the I/O loop and drop every view into guest memory."""
        self.loop.stop()
        for f in self.functions:
            f.close()
            f.device.close()
        self._router.close()
        self._ram.release()


def attach_pci(
    vm: Vm, memory: GuestMemory, bus: PioBus, devices: list[VirtioDevice],
    irq_line: Callable[[int], IrqLine], on_reset: Callable[[], None],
) -> PciSystem:  # fmt: skip
    """Bus 0 with a host bridge and ``devices`` in slots 1.., BARs from PCI_MMIO_BASE."""
    host = PciHost(on_reset)
    bus.register(PCI_CONFIG_BASE, PCI_CONFIG_PORTS, host)
    loop = IoLoop()
    ram = RamViews(memory.ranges, memory.view)
    system = PciSystem(host, loop, KvmMsiRouter(vm), ram)
    doorbells = KvmDoorbells(vm)
    for slot, device in enumerate(devices, start=1):
        bar = PCI_MMIO_BASE + slot * BAR_SIZE
        assert bar + BAR_SIZE - 1 <= PCI_MMIO_END
        msi = system._router.vectors(len(device.queue_sizes) + 1)
        function = VirtioPciDevice(
            device, bar, ram, loop, msi, irq_line(pci_intx_gsi(slot)), doorbells,
            memory.regions(), (memory.fd, memory.file_regions()),
        )  # fmt: skip
        if host.add(function) != slot:
            raise AssertionError("PCI slots are handed out in order")
        system.functions.append(function)
    loop.start()
    return system
