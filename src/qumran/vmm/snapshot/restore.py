"""``qumran-vmm --restore PATH``: the machine a snapshot describes, built again, its
state put back, its RAM mapped from the file; it then runs on where it was.

The file is checked whole first (:func:`open_snapshot`), and everything that can fail
(boot files for later reboots, disk images, KVM) fails before a vCPU runs: a restore
either resumes the guest or ends with one line saying why.
"""

from __future__ import annotations

from collections.abc import Callable

from qumran.kvm import Vm
from qumran.vmm.builder import (
    VmSpec,
    attach_legacy_devices,
    attach_pci_devices,
    boot,
    check_host,
    create_vcpus,
    create_vm,
    load_boot_source,
    make_boot,
    open_kvm,
    set_cpuid,
    setup_irqchip,
)
from qumran.vmm.coalesced import coalesce_console
from qumran.vmm.events import EventSink, for_boot
from qumran.vmm.machine import Boot, Machine, MachineConfig
from qumran.vmm.snapshot import kvmstate
from qumran.vmm.snapshot.file import Snapshot, SnapshotError, open_snapshot

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from qumran.vmm.devices.virtio.backends import Backends


def restore_machine(
    path: str, name: str | None, console_out: Callable[[bytes], None], events: EventSink,
    kvm_path: str = "/dev/kvm", force_kvm: bool = False,
) -> Machine:  # fmt: skip
    snap = open_snapshot(path)
    owned: list[Callable[[], None]] = [snap.close]
    try:
        origin: dict[str, Any] = snap.state["machine"]
        spec = VmSpec(name or origin["name"], origin["kernel"], origin["initrd"],
                      origin["cmdline"], origin["memory"], origin["vcpus"], force_kvm,
                      kvm_path)  # fmt: skip
        if origin["memory"] != snap.mem_size:
            raise SnapshotError(f"{path} is damaged: RAM sizes disagree")
        source = load_boot_source(spec)
        owned.append(source.close)
        check_host(force_kvm)
        backends = _open_backends(origin)
        if backends is not None:
            owned.append(backends.close)
        kvm = open_kvm(kvm_path)
        owned.append(kvm.close)
        memory = snap.map_memory()
    except BaseException:
        for close in reversed(owned):
            close()
        raise
    snap.close()  # the mapping keeps the file
    config = MachineConfig(spec.name, spec.memory, spec.vcpus, spec.cmdline)
    config.origin = {**origin, "name": spec.name}
    pending: list[Snapshot] = [snap]

    def booter(machine: Machine) -> Boot:
        if pending:  # the first boot resumes the snapshot; a reboot boots the kernel
            return restore_boot(machine, pending.pop(), console_out, events, backends)
        return boot(machine, source, console_out, events, backends)

    machine = Machine(config, kvm, memory, booter)
    machine.reboots = int(snap.state.get("reboots", 0))
    machine.on_close(source.close)
    return machine


def _open_backends(origin: dict[str, Any]) -> Backends | None:
    if not origin.get("virtio"):
        return None
    from qumran.vmm.devices.virtio.backends import DeviceSpecs, DiskSpec, open_backends

    disks = tuple(DiskSpec(d["path"], bool(d["readonly"])) for d in origin["disks"])
    return open_backends(DeviceSpecs(disks, (), bool(origin["rng"]), None))


def restore_boot(
    machine: Machine, snap: Snapshot, console_out: Callable[[bytes], None], events: EventSink,
    backends: Backends | None,
) -> Boot:  # fmt: skip
    state = snap.state
    events = for_boot(events, machine.reboots)
    vm = create_vm(machine.kvm, machine.memory)
    pci = None
    try:
        setup_irqchip(vm)
        vcpus = create_vcpus(vm, machine.config.vcpus)
        if len(state["vcpus"]) != len(vcpus):
            raise SnapshotError(f"{snap.path}: {len(state['vcpus'])} vCPUs saved, "
                                f"{len(vcpus)} made")  # fmt: skip
        bus, serial, pm, legacy = attach_legacy_devices(vm, console_out, events)
        pci, mmio = attach_pci_devices(vm, machine.memory, bus, backends, events, legacy)
        set_cpuid(machine.kvm, vcpus)
        kvmstate.restore_vm(vm, state["vm"])
        for vcpu, saved in zip(vcpus, state["vcpus"], strict=True):
            kvmstate.restore_vcpu(vcpu, saved)
        for name, device in legacy.items():
            device.load_state(state["legacy"][name])
        if pci is not None:
            pci.load_state(state["pci"])
        kvmstate.restore_clock(vm, state["vm"])
        coalescing = coalesce_console(machine.kvm, vm, vcpus[0], bus, serial)
    except (KeyError, ValueError, TypeError) as exc:
        _undo(vm, pci)
        raise SnapshotError(f"{snap.path}: its state does not fit this machine ({exc})") from None
    except BaseException:
        _undo(vm, pci)
        raise
    return make_boot(vm, vcpus, bus, events, mmio, serial, pm, pci, legacy, coalescing)


def _undo(vm: Vm, pci: Any) -> None:
    if pci is not None:
        pci.stop()
    vm.close()
