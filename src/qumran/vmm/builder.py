"""Boot as one linear pipeline.

``build_machine`` checks the host and the inputs, then reserves guest memory; ``boot``
(run again on every guest reboot) creates the VM, the interrupt controllers and the
vCPUs, loads the kernel and initrd, writes the ACPI tables, attaches the devices and sets
up the vCPUs' registers. Each step is a named function raising its own error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qumran.kvm import Kvm, KvmUnavailable, Vcpu, Vm
from qumran.kvm.constants import Cap
from qumran.vmm.acpi import build_acpi_tables
from qumran.vmm.acpi import constants as platform
from qumran.vmm.arch import bootparams, cpuid, gdt, lapic, layout, msrs, paging, regs
from qumran.vmm.arch.bootparams import Bzimage
from qumran.vmm.devices import PioBus
from qumran.vmm.devices.legacy import (
    COM1_BASE,
    I8042,
    I8042_COMMAND_PORT,
    I8042_DATA_PORT,
    RTC_BASE,
    RTC_PORTS,
    UART_PORTS,
    AcpiPm,
    CmosRtc,
    Serial16550,
)
from qumran.vmm.devices.pci.system import PciSystem, attach_pci
from qumran.vmm.devices.virtio.backends import Backends, DeviceSpecs, open_backends
from qumran.vmm.errors import GuestTooLarge, NoHardwareVirt, VmmError
from qumran.vmm.events import EventSink, GuestEvent, GuestEventNotice, for_boot
from qumran.vmm.machine import Boot, Machine, MachineConfig
from qumran.vmm.memory import GuestMemory
from qumran.vmm.vcpu import VcpuThread

log = logging.getLogger(__name__)

MAX_VCPUS = 64  # APIC ids fit the MADT and the xAPIC's 8-bit id with room to spare


@dataclass(frozen=True)
class BootSource:
    """The resolved boot inputs: checked kernel, initrd bytes, command line."""

    kernel: Bzimage
    initrd: bytes | None
    cmdline: str


@dataclass(frozen=True)
class VmSpec:
    name: str
    kernel: Path
    initrd: Path | None
    cmdline: str
    memory: int
    vcpus: int
    force_kvm: bool = False
    kvm_path: str = "/dev/kvm"
    devices: DeviceSpecs = field(default_factory=DeviceSpecs)


class KvmIrqLine:
    """An interrupt line into the in-kernel PIC + IOAPIC (KVM_IRQ_LINE)."""

    def __init__(self, vm: Vm, gsi: int) -> None:
        self._vm = vm
        self._gsi = gsi

    def set_level(self, high: bool) -> None:
        self._vm.irq_line(self._gsi, high)


# --- process-level checks and resources -------------------------------------------------------


def check_host(force: bool, cpuinfo: str = "/proc/cpuinfo") -> None:
    """Refuse a host whose CPU shows no VMX/SVM: its /dev/kvm cannot run a stock kernel."""
    if force:
        return
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            if flags & {"vmx", "svm"}:
                return
            break
    raise NoHardwareVirt(
        "this host has no hardware virtualization (no vmx/svm flag in /proc/cpuinfo), so "
        "its /dev/kvm cannot boot a stock kernel; use --force-kvm to try anyway"
    )


def load_boot_source(spec: VmSpec) -> BootSource:
    kernel = bootparams.parse_bzimage(_read(spec.kernel, "kernel"), str(spec.kernel))
    initrd = _read(spec.initrd, "initrd") if spec.initrd is not None else None
    bootparams.check_memory(kernel, spec.memory)
    if initrd is not None:
        bootparams.place_initrd(kernel, spec.memory, len(initrd))
    bootparams.encode_cmdline(kernel, spec.cmdline)
    if not 1 <= spec.vcpus <= MAX_VCPUS:
        raise VmmError(f"vcpus must be between 1 and {MAX_VCPUS}, not {spec.vcpus}")
    return BootSource(kernel, initrd, spec.cmdline)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise VmmError(f"cannot read {what} {path}: {exc.strerror}") from None


def open_kvm(path: str) -> Kvm:
    if not os.path.exists(path):
        raise KvmUnavailable(f"open {path}", 2, "is the kvm module loaded?")
    kvm = Kvm(path)
    for cap in (Cap.IRQCHIP, Cap.PIT2, Cap.USER_MEMORY, Cap.SET_TSS_ADDR, Cap.IMMEDIATE_EXIT):
        if not kvm.check_extension(cap):
            kvm.close()
            raise KvmUnavailable(f"KVM_CHECK_EXTENSION({cap.name})", None, "not supported")
    return kvm


def build_machine(spec: VmSpec, console_out: Callable[[bytes], None], events: EventSink) -> Machine:
    """Check everything that can be checked, then reserve memory; nothing runs yet."""
    source = load_boot_source(spec)
    check_host(spec.force_kvm)
    backends = open_backends(spec.devices)
    try:
        kvm = open_kvm(spec.kvm_path)
    except BaseException:
        backends.close()
        raise
    try:
        memory = GuestMemory(spec.memory)
    except BaseException:
        kvm.close()
        backends.close()
        raise
    config = MachineConfig(spec.name, spec.memory, spec.vcpus, spec.cmdline)
    return Machine(config, kvm, memory, lambda m: boot(m, source, console_out, events, backends))


# --- one boot -------------------------------------------------------------------------------------


def boot(
    machine: Machine,
    source: BootSource,
    console_out: Callable[[bytes], None],
    events: EventSink,
    backends: Backends | None = None,
) -> Boot:
    events = for_boot(events, machine.reboots)
    vm = create_vm(machine.kvm, machine.memory)
    try:
        setup_irqchip(vm)
        vcpus = create_vcpus(vm, machine.config.vcpus)
        load_kernel(machine.memory, source)
        initrd = load_initrd(machine.memory, source)
        rsdp = write_acpi_tables(machine.memory, machine.config.vcpus)
        write_zero_page(machine.memory, source, initrd, rsdp)
        bus, serial, pm = attach_legacy_devices(vm, console_out, events)
        pci = attach_pci_devices(vm, machine.memory, bus, backends, events)
        configure_vcpus(machine.kvm, vcpus, source.kernel)
    except BaseException:
        vm.close()
        raise
    threads = [VcpuThread(v, bus, events, pci) for v in vcpus]
    return Boot(vm=vm, bus=bus, vcpus=threads, serial=serial, pm=pm, pci=pci)


def create_vm(kvm: Kvm, memory: GuestMemory) -> Vm:
    vm = kvm.create_vm()
    try:
        vm.set_tss_addr(layout.TSS_ADDR)
        vm.set_identity_map_addr(layout.IDENTITY_MAP_ADDR)
        memory.register(vm)
    except BaseException:
        vm.close()
        raise
    return vm


def setup_irqchip(vm: Vm) -> None:
    """In-kernel PIC + IOAPIC + LAPICs, and the PIT (the tick before the LAPIC timer)."""
    vm.create_irqchip()
    vm.create_pit2()


def create_vcpus(vm: Vm, count: int) -> list[Vcpu]:
    return [vm.create_vcpu(i) for i in range(count)]


def load_kernel(memory: GuestMemory, source: BootSource) -> None:
    """Payload at 1 MiB; command line; GDT, IDT and page tables for the 64-bit entry."""
    memory.write(layout.HIGH_MEMORY, source.kernel.payload)
    memory.write(layout.CMDLINE_ADDR, bootparams.encode_cmdline(source.kernel, source.cmdline))
    memory.write(layout.GDT_ADDR, gdt.gdt_bytes())
    memory.write(layout.IDT_ADDR, bytes(8))
    pml4, tables = paging.build_page_tables()
    memory.write(pml4, tables)


def load_initrd(memory: GuestMemory, source: BootSource) -> tuple[int, int] | None:
    """The initrd at the top of low RAM; (address, size) for the zero page."""
    if source.initrd is None:
        return None
    addr = bootparams.place_initrd(source.kernel, memory.size, len(source.initrd))
    memory.write(addr, source.initrd)
    return addr, len(source.initrd)


def write_acpi_tables(memory: GuestMemory, vcpus: int) -> int:
    blob = build_acpi_tables(layout.ACPI_BASE, vcpus)
    if len(blob.data) > layout.ACPI_SIZE:
        raise GuestTooLarge(f"ACPI tables are {len(blob.data)} bytes; 128 KiB are reserved")
    memory.write(layout.ACPI_BASE, blob.data)
    return blob.rsdp_addr


def write_zero_page(
    memory: GuestMemory, source: BootSource, initrd: tuple[int, int] | None, rsdp: int | None
) -> None:
    zero_page = bootparams.build_zero_page(
        source.kernel, memory.size, layout.CMDLINE_ADDR, initrd, rsdp
    )
    memory.write(layout.ZERO_PAGE_ADDR, zero_page)


def attach_legacy_devices(
    vm: Vm, console_out: Callable[[bytes], None], events: EventSink
) -> tuple[PioBus, Serial16550, AcpiPm]:
    """COM1, CMOS RTC, i8042 (reset line) and ACPI PM block on one bus.

    Every reset path (i8042 0xFE, ACPI reset register, 0xCF9) is a guest reboot.
    """

    def notify(event: GuestEvent, detail: str) -> Callable[[], None]:
        return lambda: events(GuestEventNotice(event, detail))

    bus = PioBus()
    serial = Serial16550(KvmIrqLine(vm, platform.COM1_IRQ), console_out)
    bus.register(COM1_BASE, UART_PORTS, serial)
    bus.register(RTC_BASE, RTC_PORTS, CmosRtc())
    i8042 = I8042(on_reset=notify(GuestEvent.REBOOT, "reset through the i8042"))
    bus.register(I8042_DATA_PORT, 1, i8042)
    bus.register(I8042_COMMAND_PORT, 1, i8042)
    pm = AcpiPm(
        KvmIrqLine(vm, platform.SCI_IRQ),
        on_poweroff=notify(GuestEvent.POWEROFF, "ACPI power-off (S5)"),
        on_reset=notify(GuestEvent.REBOOT, "ACPI reset register"),
    )
    bus.register(platform.PM_BASE, platform.PM_LEN, pm)
    return bus, serial, pm


def attach_pci_devices(
    vm: Vm, memory: GuestMemory, bus: PioBus, backends: Backends | None, events: EventSink
) -> PciSystem:
    """PCI bus 0 on ports 0xCF8-0xCFF (0xCF9 resets: a guest reboot) with the virtio devices."""
    devices = backends.make_devices() if backends is not None else []

    def on_reset() -> None:
        events(GuestEventNotice(GuestEvent.REBOOT, "reset through port 0xCF9"))

    return attach_pci(vm, memory, bus, devices, lambda gsi: KvmIrqLine(vm, gsi), on_reset)


def configure_vcpus(kvm: Kvm, vcpus: list[Vcpu], kernel: Bzimage) -> None:
    """CPUID, MSRs and LAPIC wiring on every vCPU; boot registers on the first only."""
    supported = kvm.supported_cpuid()
    tsc_deadline = bool(kvm.check_extension(Cap.TSC_DEADLINE_TIMER))
    for v in vcpus:
        v.set_cpuid2(cpuid.vcpu_cpuid(supported, v.id, len(vcpus), tsc_deadline))
        v.set_msrs(msrs.boot_msrs())
        v.set_lapic(lapic.set_lint(v.get_lapic()))
    bsp = vcpus[0]
    bsp.set_regs(regs.boot_regs(kernel.entry_64))
    bsp.set_fpu(regs.boot_fpu())
    bsp.set_sregs(regs.boot_sregs(bsp.get_sregs(), layout.PML4_ADDR))
