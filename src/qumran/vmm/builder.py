"""Boot as one linear pipeline.

``build_machine`` checks the host and the inputs, then reserves guest memory; ``boot``
(run again on every guest reboot) creates the VM, the interrupt controllers and the
vCPUs, loads the kernel and initrd, writes the ACPI tables, attaches the devices and sets
up the vCPUs' registers. Each step is a named function raising its own error.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from qumran.kvm import Kvm, KvmUnavailable, Vcpu, Vm
from qumran.kvm.constants import Cap
from qumran.vmm.acpi import build_acpi_tables
from qumran.vmm.acpi import constants as platform
from qumran.vmm.arch import bootparams, cpuid, gdt, lapic, layout, msrs, paging, regs
from qumran.vmm.arch.bootparams import Bzimage
from qumran.vmm.coalesced import ConsoleCoalescing, coalesce_console
from qumran.vmm.devices import PioBus
from qumran.vmm.devices.legacy import (
    COM1_BASE,
    I8042,
    I8042_COMMAND_PORT,
    I8042_DATA_PORT,
    PCI_CONFIG_BASE,
    PCI_CONFIG_PORTS,
    RTC_BASE,
    RTC_PORTS,
    UART_PORTS,
    AcpiPm,
    CmosRtc,
    PciConfigStub,
    Serial16550,
)
from qumran.vmm.errors import GuestTooLarge, NoHardwareVirt, VmmError
from qumran.vmm.events import EventSink, GuestEvent, GuestEventNotice, for_boot
from qumran.vmm.machine import Boot, Machine, MachineConfig
from qumran.vmm.memory import GuestMemory
from qumran.vmm.vcpu import VcpuThread

TYPE_CHECKING = False
if TYPE_CHECKING:  # the virtio stack is imported only for a machine that has devices
    from typing import Any

    from qumran.vmm.devices.virtio.backends import Backends, DeviceSpecs
    from qumran.vmm.machine import Peripherals, Stateful
    from qumran.vmm.vcpu import MmioHandler

MAX_VCPUS = 64  # APIC ids fit the MADT and the xAPIC's 8-bit id with room to spare


class BootFile:
    """A kernel or initrd kept open for the life of the VM, read into RAM at every boot.

    Reading the file again instead of keeping its bytes saves its size in resident memory
    (the Debian cloud kernel is 14 MiB); holding the descriptor keeps what a reboot loads
    the same file that was checked at start-up, even if the path is replaced meanwhile.
    """

    __slots__ = ("fd", "size")

    def __init__(self, path: str, what: str) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise VmmError(f"cannot read {what} {path}: {exc.strerror}") from None
        self.size = os.fstat(self.fd).st_size

    def head(self, length: int) -> bytes:
        return os.pread(self.fd, length, 0)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class BootSource:
    """The resolved boot inputs: checked kernel, initrd, command line."""

    __slots__ = ("cmdline", "initrd", "kernel", "kernel_file")

    def __init__(
        self, kernel: Bzimage, kernel_file: BootFile, initrd: BootFile | None, cmdline: str
    ) -> None:
        self.kernel = kernel
        self.kernel_file = kernel_file
        self.initrd = initrd
        self.cmdline = cmdline

    def close(self) -> None:
        self.kernel_file.close()
        if self.initrd is not None:
            self.initrd.close()


class VmSpec:
    """What the command line asks for (paths unchecked)."""

    __slots__ = (
        "cmdline",
        "devices",
        "force_kvm",
        "initrd",
        "kernel",
        "kvm_path",
        "memory",
        "name",
        "vcpus",
    )  # fmt: skip

    def __init__(self, name: str, kernel: str, initrd: str | None, cmdline: str, memory: int,
                 vcpus: int, force_kvm: bool = False, kvm_path: str = "/dev/kvm",
                 devices: DeviceSpecs | None = None) -> None:  # fmt: skip
        self.name = name
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.memory = memory
        self.vcpus = vcpus
        self.force_kvm = force_kvm
        self.kvm_path = kvm_path
        self.devices = devices  # None: no virtio devices


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
        with open(cpuinfo) as f:
            text = f.read()
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
    """Open and check the kernel and initrd; they stay open (see :class:`BootFile`)."""
    kernel_file = BootFile(spec.kernel, "kernel")
    initrd: BootFile | None = None
    try:
        head = kernel_file.head(bootparams.HEAD_SIZE)
        kernel = bootparams.parse_bzimage(head, spec.kernel, kernel_file.size)
        initrd = BootFile(spec.initrd, "initrd") if spec.initrd is not None else None
        bootparams.check_memory(kernel, spec.memory)
        if initrd is not None:
            bootparams.place_initrd(kernel, spec.memory, initrd.size)
        bootparams.encode_cmdline(kernel, spec.cmdline)
        if not 1 <= spec.vcpus <= MAX_VCPUS:
            raise VmmError(f"vcpus must be between 1 and {MAX_VCPUS}, not {spec.vcpus}")
    except BaseException:
        kernel_file.close()
        if initrd is not None:
            initrd.close()
        raise
    return BootSource(kernel, kernel_file, initrd, spec.cmdline)


def _shares_memory(spec: VmSpec) -> bool:
    """Whether another process maps guest RAM: a disk served by a vhost-user back end."""
    return spec.devices is not None and any(d.vhost_user for d in spec.devices.disks)


def open_kvm(path: str) -> Kvm:
    if not os.path.exists(path):
        raise KvmUnavailable(f"open {path}", 2, "is the kvm module loaded?")
    kvm = Kvm(path)
    for cap in (Cap.IRQCHIP, Cap.PIT2, Cap.USER_MEMORY, Cap.SET_TSS_ADDR, Cap.IMMEDIATE_EXIT):
        if not kvm.check_extension(cap):
            kvm.close()
            raise KvmUnavailable(f"KVM_CHECK_EXTENSION({Cap.name_of(cap)})", None, "not supported")
    return kvm


def build_machine(spec: VmSpec, console_out: Callable[[bytes], None], events: EventSink) -> Machine:
    """Check everything that can be checked, then reserve memory; nothing runs yet."""
    source = load_boot_source(spec)
    owned: list[Callable[[], None]] = [source.close]  # closed, last first, on the way out
    try:
        check_host(spec.force_kvm)
        backends = None
        if spec.devices is not None:
            from qumran.vmm.devices.virtio.backends import open_backends

            backends = open_backends(spec.devices)
            owned.append(backends.close)
        kvm = open_kvm(spec.kvm_path)
        owned.append(kvm.close)
        memory = GuestMemory(spec.memory, shared=_shares_memory(spec))
    except BaseException:
        for close in reversed(owned):
            close()
        raise
    config = MachineConfig(spec.name, spec.memory, spec.vcpus, spec.cmdline)
    config.origin = origin_of(spec)
    machine = Machine(config, kvm, memory, lambda m: boot(m, source, console_out, events, backends))
    machine.on_close(source.close)
    return machine


def origin_of(spec: VmSpec) -> dict[str, Any]:
    """What a snapshot records to build the same machine again: boot files for its later
    reboots, and the devices (only the kinds a snapshot can hold; others refuse it)."""
    devices = spec.devices
    disks = [] if devices is None else [
        {"path": os.path.abspath(d.path), "readonly": d.readonly}
        for d in devices.disks if not d.vhost_user
    ]  # fmt: skip
    return {
        "name": spec.name, "kernel": os.path.abspath(spec.kernel),
        "initrd": os.path.abspath(spec.initrd) if spec.initrd else None,
        "cmdline": spec.cmdline, "memory": spec.memory, "vcpus": spec.vcpus,
        "disks": disks, "rng": bool(devices and devices.rng),
        "virtio": devices is not None,
    }  # fmt: skip


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
        bus, serial, pm, legacy = attach_legacy_devices(vm, console_out, events)
        pci, mmio = attach_pci_devices(vm, machine.memory, bus, backends, events, legacy)
        configure_vcpus(machine.kvm, vcpus, source.kernel)
        coalescing = coalesce_console(machine.kvm, vm, vcpus[0], bus, serial)
    except BaseException:
        vm.close()
        raise
    return make_boot(vm, vcpus, bus, events, mmio, serial, pm, pci, legacy, coalescing)


def make_boot(
    vm: Vm, vcpus: list[Vcpu], bus: PioBus, events: EventSink, mmio: MmioHandler | None,
    serial: Serial16550, pm: AcpiPm, pci: Peripherals | None, legacy: dict[str, Stateful],
    coalescing: ConsoleCoalescing | None,
) -> Boot:  # fmt: skip
    """The Boot, with a thread for each vCPU (that takes the console's queued bytes first
    at each exit, when there are any: coalesced.py)."""
    drain = coalescing.drain if coalescing is not None else None
    threads = [VcpuThread(v, bus, events, mmio, drain) for v in vcpus]
    return Boot(vm=vm, bus=bus, vcpus=threads, serial=serial, pm=pm, pci=pci, legacy=legacy,
                coalescing=coalescing)  # fmt: skip


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
    kernel = source.kernel
    memory.load_file(
        layout.HIGH_MEMORY, source.kernel_file.fd, kernel.payload_offset, kernel.payload_size
    )
    memory.write(layout.CMDLINE_ADDR, bootparams.encode_cmdline(source.kernel, source.cmdline))
    memory.write(layout.GDT_ADDR, gdt.gdt_bytes())
    memory.write(layout.IDT_ADDR, bytes(8))
    pml4, tables = paging.build_page_tables()
    memory.write(pml4, tables)


def load_initrd(memory: GuestMemory, source: BootSource) -> tuple[int, int] | None:
    """The initrd at the top of low RAM; (address, size) for the zero page."""
    initrd = source.initrd
    if initrd is None:
        return None
    addr = bootparams.place_initrd(source.kernel, memory.size, initrd.size)
    memory.load_file(addr, initrd.fd, 0, initrd.size)
    return addr, initrd.size


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
) -> tuple[PioBus, Serial16550, AcpiPm, dict[str, Stateful]]:
    """COM1, CMOS RTC, i8042 (reset line) and ACPI PM block on one bus; the last item
    names each device with state for a snapshot.

    Every reset path (i8042 0xFE, ACPI reset register, 0xCF9) is a guest reboot.
    """

    def notify(event: GuestEvent, detail: str) -> Callable[[], None]:
        return lambda: events(GuestEventNotice(event, detail))

    bus = PioBus()
    serial = Serial16550(KvmIrqLine(vm, platform.COM1_IRQ), console_out)
    bus.register(COM1_BASE, UART_PORTS, serial)
    rtc = CmosRtc()
    bus.register(RTC_BASE, RTC_PORTS, rtc)
    i8042 = I8042(on_reset=notify(GuestEvent.REBOOT, "reset through the i8042"))
    bus.register(I8042_DATA_PORT, 1, i8042)
    bus.register(I8042_COMMAND_PORT, 1, i8042)
    pm = AcpiPm(
        KvmIrqLine(vm, platform.SCI_IRQ),
        on_poweroff=notify(GuestEvent.POWEROFF, "ACPI power-off (S5)"),
        on_reset=notify(GuestEvent.REBOOT, "ACPI reset register"),
    )
    bus.register(platform.PM_BASE, platform.PM_LEN, pm)
    return bus, serial, pm, {"serial": serial, "rtc": rtc, "i8042": i8042, "pm": pm}


def attach_pci_devices(
    vm: Vm,
    memory: GuestMemory,
    bus: PioBus,
    backends: Backends | None,
    events: EventSink,
    legacy: dict[str, Stateful],
) -> tuple[Peripherals | None, MmioHandler | None]:
    """PCI bus 0 on ports 0xCF8-0xCFF (0xCF9 resets: a guest reboot) with the virtio devices.

    Without devices, bus 0 holds only a host bridge: :class:`PciConfigStub` serves it, and
    the virtio stack (its modules and its I/O thread) is never loaded.
    """

    def on_reset() -> None:
        events(GuestEventNotice(GuestEvent.REBOOT, "reset through port 0xCF9"))

    if backends is None:
        stub = PciConfigStub(on_reset=on_reset)
        bus.register(PCI_CONFIG_BASE, PCI_CONFIG_PORTS, stub)
        legacy["pci_config"] = stub
        return None, None
    from qumran.vmm.devices.pci.system import attach_pci

    devices = backends.make_devices()
    pci = attach_pci(vm, memory, bus, devices, lambda gsi: KvmIrqLine(vm, gsi), on_reset)
    return pci, pci


def set_cpuid(kvm: Kvm, vcpus: list[Vcpu]) -> None:
    """The CPUID table of every vCPU (first of all: other state is checked against it)."""
    supported = kvm.supported_cpuid()
    tsc_deadline = bool(kvm.check_extension(Cap.TSC_DEADLINE_TIMER))
    for v in vcpus:
        v.set_cpuid2(cpuid.vcpu_cpuid(supported, v.id, len(vcpus), tsc_deadline))


def configure_vcpus(kvm: Kvm, vcpus: list[Vcpu], kernel: Bzimage) -> None:
    """CPUID, MSRs and LAPIC wiring on every vCPU; boot registers on the first only."""
    set_cpuid(kvm, vcpus)
    for v in vcpus:
        v.set_msrs(msrs.boot_msrs())
        v.set_lapic(lapic.set_lint(v.get_lapic()))
    bsp = vcpus[0]
    bsp.set_regs(regs.boot_regs(kernel.entry_64))
    bsp.set_fpu(regs.boot_fpu())
    bsp.set_sregs(regs.boot_sregs(bsp.get_sregs(), layout.PML4_ADDR))
