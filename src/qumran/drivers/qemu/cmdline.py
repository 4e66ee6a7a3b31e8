"""The QEMU command line for a VM: a pure function of the spec, its paths and the accelerator.

Nothing here touches the system, so every option can be checked in a unit test. Options
follow ``qemu-system-x86_64(1)`` for QEMU 7.2; key=value option strings escape a comma in
a value by doubling it (QEMU's QemuOpts syntax), so any path is safe.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from qumran.config.spec import Disk, DiskBoot, KernelBoot, Nic, VmSpec
from qumran.drivers.base import RunPaths

Accel = Literal["kvm", "tcg"]
QEMU_BINARY = "qemu-system-x86_64"
MACHINE = "q35"


def build_argv(spec: VmSpec, paths: RunPaths, accel: Accel, binary: str = QEMU_BINARY) -> list[str]:
    """The full argv (``binary`` first) that runs ``spec`` as one QEMU process."""
    return [
        binary,
        *_identity(spec),
        *_machine(spec, accel),
        *_boot(spec),
        *_disks(spec),
        *_nics(spec),
        *_console(spec, paths),
        *_display(spec, paths),
        *_monitor(paths),
        "-pidfile",
        str(paths.pidfile),
    ]


def _identity(spec: VmSpec) -> list[str]:
    # `process=` sets the thread name (comm), so ps and top show the VM by name;
    # debug-threads names each vCPU thread ("CPU 0/KVM") in top -H.
    # -nodefaults: no implicit NIC, serial, parallel, monitor, floppy or CD-ROM;
    # -no-user-config: no /etc/qemu/*.conf influences the VM.
    # No -no-shutdown: a guest power-off ends the process, which is how the daemon sees it.
    return [
        "-name",
        f"guest={spec.name},process=qumran-{spec.name},debug-threads=on",
        "-nodefaults",
        "-no-user-config",
    ]


def _machine(spec: VmSpec, accel: Accel) -> list[str]:
    # -cpu host exposes the real CPU under KVM; TCG cannot, and `max` gives it every
    # feature TCG emulates. pvpanic lets a guest report a panic (GUEST_PANICKED event).
    return [
        "-machine",
        MACHINE,
        "-accel",
        accel,
        "-cpu",
        "host" if accel == "kvm" else "max",
        "-m",
        str(spec.memory),
        "-smp",
        str(spec.vcpus),
        "-device",
        "pvpanic",
    ]


def _boot(spec: VmSpec) -> list[str]:
    boot = spec.boot
    if isinstance(boot, KernelBoot):
        argv = ["-kernel", str(boot.kernel)]
        if boot.initrd is not None:
            argv += ["-initrd", str(boot.initrd)]
        if boot.cmdline:
            argv += ["-append", boot.cmdline]
        return argv
    return []  # DiskBoot: the firmware boots the disk given bootindex=0 in _disks


def _disks(spec: VmSpec) -> list[str]:
    boot_disk = spec.boot.disk if isinstance(spec.boot, DiskBoot) else None
    argv: list[str] = []
    for index, disk in enumerate(spec.disks):
        argv += disk_args(index, disk, boot=index == boot_disk)
    return argv


def disk_args(index: int, disk: Disk, *, boot: bool = False) -> list[str]:
    """A protocol node (the file), a format node on top, and the virtio-blk device."""
    node = f"disk{index}"
    readonly = "on" if disk.readonly else "off"
    device = f"virtio-blk-pci,drive={node},id=virtio-{node}"
    if boot:
        device += ",bootindex=0"
    return [
        "-blockdev",
        f"driver=file,node-name={node}-file,filename={escape(str(disk.path))},read-only={readonly}",
        "-blockdev",
        f"driver={disk.format},node-name={node},file={node}-file,read-only={readonly}",
        "-device",
        device,
    ]


def _nics(spec: VmSpec) -> list[str]:
    argv: list[str] = []
    for index, nic in enumerate(spec.nics):
        argv += nic_args(index, nic, spec.name)
    return argv


def nic_args(index: int, nic: Nic, vm_name: str) -> list[str]:
    """User-mode networking (slirp) behind a virtio-net device."""
    mac = nic.mac if nic.mac is not None else default_mac(vm_name, index)
    return [
        "-netdev",
        f"user,id=net{index}",
        "-device",
        f"virtio-net-pci,netdev=net{index},mac={mac},id=virtio-net{index}",
    ]


def default_mac(vm_name: str, index: int) -> str:
    """A MAC that stays the same across restarts of one VM and differs between VMs.

    52:54:00 is the prefix QEMU and libvirt use for guests (a locally managed block).
    """
    digest = hashlib.sha256(f"{vm_name}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _console(spec: VmSpec, paths: RunPaths) -> list[str]:
    # The daemon connects to this socket and fans the stream out to its clients; wait=off
    # lets the guest boot before anyone connects. The log file keeps everything the guest
    # printed, so a restarted daemon can show recent output.
    if not spec.serial:
        return []
    chardev = (
        f"socket,id=serial0,path={escape(str(paths.console))},server=on,wait=off,"
        f"logfile={escape(str(paths.console_log))},logappend=on"
    )
    return ["-chardev", chardev, "-serial", "chardev:serial0"]


def _display(spec: VmSpec, paths: RunPaths) -> list[str]:
    if not spec.graphics:
        return ["-display", "none"]
    return ["-display", "none", "-device", "VGA", "-vnc", f"unix:{escape(str(paths.vnc))}"]


def _monitor(paths: RunPaths) -> list[str]:
    # Same as `-qmp unix:PATH,server=on,wait=off`, spelled as a chardev so the path can be
    # escaped. It comes after the serial chardev: chardevs are created in command-line
    # order, so once QMP answers, the console socket is listening too.
    chardev = f"socket,id=monitor,path={escape(str(paths.monitor))},server=on,wait=off"
    return ["-chardev", chardev, "-mon", "chardev=monitor,mode=control"]


def escape(value: str) -> str:
    """Escape a value inside a QEMU key=value option string (a comma is written twice)."""
    return value.replace(",", ",,")


def describe(argv: list[str]) -> str:
    """The argv as one shell-like line, for logs."""
    return " ".join(arg if arg and " " not in arg else repr(arg) for arg in argv)
