"""``snapshot PATH`` on the control socket: the guest held still, its state and RAM
written to a file (:mod:`qumran.vmm.snapshot.file`)."""

from __future__ import annotations

import os
import time

from qumran import __version__
from qumran.errors import InvalidArgument, InvalidState
from qumran.vmm.machine import Boot, Machine, MachineState
from qumran.vmm.snapshot import kvmstate
from qumran.vmm.snapshot.file import write_snapshot, write_snapshot_fd

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def take_snapshot(machine: Machine, boot: Boot, path: str | int) -> dict[str, Any]:
    """``path``: where to write the file, or a file open for writing (its sender renames
    it into place)."""
    if isinstance(path, str) and not os.path.isabs(path):
        raise InvalidArgument(f"snapshot path {path!r} must be absolute")
    if isinstance(path, str) and not os.path.isdir(os.path.dirname(path)):
        raise InvalidArgument(f"snapshot path {path}: directory {os.path.dirname(path)} "
                              "does not exist")  # fmt: skip
    if boot.pci is not None:
        refused = boot.pci.unsnapshottable()
        if refused:
            raise InvalidState(
                f"cannot snapshot this VM: its {', '.join(refused)} device"
                f"{'s' if len(refused) > 1 else ''} cannot be saved yet (only virtio-blk on a "
                "raw image and virtio-rng can)"
            )
    resume = machine.state is MachineState.RUNNING
    started = time.monotonic()
    machine.pause()
    boot.drain_console()  # bytes KVM queued belong to the console before the snapshot
    try:
        release = boot.pci.park() if boot.pci is not None else (lambda: None)
        try:
            state = collect(machine, boot)
            if isinstance(path, int):
                written = write_snapshot_fd(path, state, machine.memory)
            else:
                written = write_snapshot(path, state, machine.memory)
        finally:
            release()
    finally:
        if resume:
            machine.resume()
    return {"path": path if isinstance(path, str) else None, "memory_bytes": written,
            "seconds": round(time.monotonic() - started, 3)}  # fmt: skip


def collect(machine: Machine, boot: Boot) -> dict[str, Any]:
    """Everything but RAM (vCPUs parked, device I/O thread parked)."""
    vcpus = [t.vcpu for t in boot.vcpus]
    msrs = kvmstate.readable_msrs(vcpus[0], machine.kvm.msr_index_list())
    return {
        "qumran": __version__,
        "machine": machine.config.origin,
        "reboots": machine.reboots,
        "vm": kvmstate.save_vm(boot.vm),
        "vcpus": [kvmstate.save_vcpu(v, msrs) for v in vcpus],
        "legacy": {name: device.save_state() for name, device in boot.legacy.items()},
        "pci": boot.pci.save_state() if boot.pci is not None else None,
    }
