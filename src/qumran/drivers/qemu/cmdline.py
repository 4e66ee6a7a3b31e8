"""The QEMU command line for a VM: a pure function of the spec, the fds it inherits and
the accelerator.

Nothing here touches the system, so every option can be checked in a unit test. Options
follow ``qemu-system-x86_64(1)`` for QEMU 7.2; key=value option strings escape a comma in
a value by doubling it (QEMU's QemuOpts syntax), so any path is safe. QEMU opens no path
of the daemon's: its monitor and console are sockets the daemon made (``fd=N``), its
console log a file the daemon opened (an fd set), and its display has no socket at all
(the daemon hands it each viewer's connection over QMP, ``add_client``).
"""

from __future__ import annotations

import hashlib
from typing import Literal

from qumran.config.spec import Disk, DiskBoot, KernelBoot, Nic, VmSpec
from qumran.drivers.base import HandoffFds, NetFds

Accel = Literal["kvm", "tcg"]
QEMU_BINARY = "qemu-system-x86_64"
MACHINE = "q35"


CONSOLE_LOG_FDSET = 1
SEED_FDSET = 2


def build_argv(spec: VmSpec, fds: HandoffFds, accel: Accel, binary: str = QEMU_BINARY) -> list[str]:
    """The full argv (``binary`` first) that runs ``spec`` as one QEMU process."""
    return [
        binary,
        *_identity(spec),
        *_machine(spec, accel),
        *_boot(spec),
        *_disks(spec),
        *_seed(fds),
        *_nics(spec, fds),
        *_console(spec, fds),
        *_display(spec),
        *_monitor(fds),
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
        f"driver=file,node-name={node}-file,filename={escape(str(disk.host_path))},read-only={readonly}",
        "-blockdev",
        f"driver={disk.format},node-name={node},file={node}-file,read-only={readonly}",
        "-device",
        device,
    ]


def _nics(spec: VmSpec, fds: HandoffFds) -> list[str]:
    argv: list[str] = []
    taps = iter(fds.nets)
    for index, nic in enumerate(spec.nics):
        if nic.network is None:
            argv += nic_args(index, nic, spec.name)
            continue
        net = next(taps, None)
        if net is None:
            raise ValueError(f"internal: no TAP was handed over for nics[{index}]")
        argv += tap_nic_args(index, nic, net, spec.name)
    return argv


def tap_nic_args(index: int, nic: Nic, net: NetFds, vm_name: str) -> list[str]:
    """A network NIC: the TAP the daemon made (already a port of the network's bridge)
    as an inherited fd, so QEMU needs no right to make one; with vhost-net when the
    daemon could open /dev/vhost-net (its fd is passed too: QEMU opens nothing)."""
    mac = nic.mac if nic.mac is not None else default_mac(vm_name, index)
    netdev = f"tap,id=net{index},fd={net.tap}"
    if net.vhost is not None:
        netdev += f",vhost=on,vhostfd={net.vhost}"
    return [
        "-netdev",
        netdev,
        "-device",
        f"virtio-net-pci,netdev=net{index},mac={mac},id=virtio-net{index}",
    ]


def nic_args(index: int, nic: Nic, vm_name: str) -> list[str]:
    """User-mode networking (slirp) behind a virtio-net device, with its port forwards."""
    mac = nic.mac if nic.mac is not None else default_mac(vm_name, index)
    netdev = f"user,id=net{index}"
    for fwd in nic.forwards:  # validated: no comma can reach the option string
        netdev += (
            f",hostfwd={fwd.proto}:{fwd.host_addr}:{fwd.host_port}"
            f"-{fwd.guest_addr}:{fwd.guest_port}"
        )
    return [
        "-netdev",
        netdev,
        "-device",
        f"virtio-net-pci,netdev=net{index},mac={mac},id=virtio-net{index}",
    ]


def _seed(fds: HandoffFds) -> list[str]:
    """The cloud-init seed, read-only, as one more virtio-blk disk after the VM's own.

    A disk rather than a CD-ROM: q35's CD-ROM hangs off its AHCI controller, a driver a
    cloud kernel may leave out, whereas virtio-blk is what the root disk already needs;
    cloud-init finds a NoCloud seed by its label on any block device. QEMU opens no path:
    the daemon's read-only fd is in an fd set, and /dev/fdset/N picks it for O_RDONLY.
    """
    if fds.seed is None:
        return []
    return [
        "-add-fd",
        f"fd={fds.seed},set={SEED_FDSET},opaque=seed.iso",
        "-blockdev",
        f"driver=file,node-name=seed-file,filename=/dev/fdset/{SEED_FDSET},read-only=on",
        "-blockdev",
        "driver=raw,node-name=seed,file=seed-file,read-only=on",
        "-device",
        "virtio-blk-pci,drive=seed,id=virtio-seed",
    ]


def default_mac(vm_name: str, index: int) -> str:
    """A MAC that stays the same across restarts of one VM and differs between VMs.

    52:54:00 is the prefix QEMU and libvirt use for guests (a locally managed block).
    """
    digest = hashlib.sha256(f"{vm_name}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _console(spec: VmSpec, fds: HandoffFds) -> list[str]:
    # The daemon connects to this socket and fans the stream out to its clients; wait=off
    # lets the guest boot before anyone connects. The log file keeps everything the guest
    # printed, so a restarted daemon can show recent output. QEMU opens a log file by
    # name only, so the daemon's open file goes in an fd set (/dev/fdset/N), whose
    # O_WRONLY|O_APPEND matches what QEMU asks for with logappend=on.
    if not spec.serial or fds.console is None:
        return []
    chardev = (
        f"socket,id=serial0,fd={fds.console},server=on,wait=off,"
        f"logfile=/dev/fdset/{CONSOLE_LOG_FDSET},logappend=on"
    )
    return [
        "-add-fd",
        f"fd={fds.console_log},set={CONSOLE_LOG_FDSET},opaque=console.log",
        "-chardev",
        chardev,
        "-serial",
        "chardev:serial0",
    ]


def _display(spec: VmSpec) -> list[str]:
    # -vnc none: a VNC server with no listening socket. Viewers arrive one connection at
    # a time, passed over QMP (getfd + add_client), so no socket path exists to abuse.
    if not spec.graphics:
        return ["-display", "none"]
    return ["-display", "none", "-device", "VGA", "-vnc", "none"]


def _monitor(fds: HandoffFds) -> list[str]:
    # It comes after the serial chardev: chardevs are created in command-line order, and
    # each re-listens on its socket (so SO_PEERCRED names QEMU), so once QMP answers, the
    # console socket is QEMU's too.
    chardev = f"socket,id=monitor,fd={fds.monitor},server=on,wait=off"
    return ["-chardev", chardev, "-mon", "chardev=monitor,mode=control"]


def escape(value: str) -> str:
    """Escape a value inside a QEMU key=value option string (a comma is written twice)."""
    return value.replace(",", ",,")
