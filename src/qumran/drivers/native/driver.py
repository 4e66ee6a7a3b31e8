"""The native driver: one ``qumran-vmm`` process per VM, Qumran's own VMM on /dev/kvm.

The launch is every driver's (:mod:`qumran.drivers.startup`): this module gives it
qumran-vmm's command line and speaks its control socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from qumran.config.spec import KernelBoot, Nic, VmSpec
from qumran.drivers.base import (
    Driver,
    EventSink,
    HandoffFds,
    HostInfo,
    Instance,
    NetFds,
    Owner,
    RunPaths,
)
from qumran.drivers.checks import check_files
from qumran.drivers.native import storage
from qumran.drivers.native.control import VmmControl
from qumran.drivers.native.storage import StorageDaemon
from qumran.drivers.process import ProcState, Spawned
from qumran.drivers.qemu.cmdline import default_mac
from qumran.drivers.seed import check_seed
from qumran.errors import HypervisorError, InvalidArgument, InvalidState

if TYPE_CHECKING:
    from qumran.drivers.qemu.accel import AccelChoice


def vmm_binary() -> str:
    return str(Path(sys.executable).parent / "qumran-vmm")


# The vhost-user sockets of the disks a storage daemon serves, for the start under way
# (set by NativeDriver.launch around the shared start-up path, which calls ``command``).
_SERVED: contextvars.ContextVar[dict[int, Path] | None] = contextvars.ContextVar(
    "served", default=None
)
# The storage daemon of that start, picked up by ``open_instance``.
_STORAGE: contextvars.ContextVar[StorageDaemon | None] = contextvars.ContextVar(
    "storage", default=None
)


def build_argv(
    spec: VmSpec, fds: HandoffFds, binary: str, served: dict[int, Path] | None = None
) -> list[str]:
    assert isinstance(spec.boot, KernelBoot)
    console = f"socket:fd={fds.console}" if fds.console is not None else "none"
    if fds.restore is not None:  # the machine, its disks and boot files: from the snapshot
        return [
            binary, "--restore", f"fd={fds.restore}", "--name", spec.name,
            "--console", console, "--console-log", f"fd={fds.console_log}",
            "--control", f"fd={fds.monitor}",
        ]  # fmt: skip
    argv = [
        binary, "--name", spec.name, "--kernel", str(spec.boot.kernel),
        "--cmdline", spec.boot.cmdline, "--memory", f"{spec.memory}M",
        "--vcpus", str(spec.vcpus), "--console", console,
        "--console-log", f"fd={fds.console_log}",
        "--control", f"fd={fds.monitor}",
    ]  # fmt: skip
    if spec.boot.initrd is not None:
        argv += ["--initrd", str(spec.boot.initrd)]
    served = served or {}
    for i, disk in enumerate(spec.disks):  # virtio-blk, in order: /dev/vda, /dev/vdb, ...
        if i in served:  # qcow2: through the storage daemon
            argv += ["--disk", f"vhost-user={served[i]}"]
        else:
            argv += ["--disk", f"{disk.host_path},ro" if disk.readonly else str(disk.host_path)]
    if fds.seed is not None:
        # The cloud-init seed, after the VM's own disks (as with QEMU): a raw read-only
        # virtio-blk disk on the fd of qumrand's own file in the run directory, so
        # qumran-vmm follows no path for it. cloud-init finds it by its label.
        argv += ["--disk", f"fd={fds.seed},ro"]
    argv += net_args(spec, fds)
    return argv


def net_args(spec: VmSpec, fds: HandoffFds) -> list[str]:
    """One ``--net`` per NIC, in order. A network NIC: ``fd=N,mac=..``, the TAP the daemon
    made and handed over; vhost-net only through an fd the daemon opened (``vhostfd=``):
    qumran-vmm runs as the VM's owner, who may not open /dev/vhost-net (udev makes it
    root's 0600 on some hosts, the KVM test host's devtmpfs too), and a VM must not fail to
    start over it. A user NIC: ``passt,mac=..,forward=..``: qumran-vmm starts passt, which
    needs no privilege and nothing from the daemon."""
    taps = iter(fds.nets)
    wanted = sum(1 for nic in spec.nics if nic.network is not None)
    if wanted != len(fds.nets):
        raise ValueError(f"internal: {len(fds.nets)} TAPs handed over for {wanted} NICs")
    argv: list[str] = []
    for index, nic in enumerate(spec.nics):
        mac = nic.mac if nic.mac is not None else default_mac(spec.name, index)
        if nic.network is None:
            option = f"passt,mac={mac}"
            for fwd in nic.forwards:  # validated: no comma can reach the option string
                option += f",forward={fwd.proto}:{fwd.host_addr}:{fwd.host_port}-:{fwd.guest_port}"
            argv += ["--net", option]
            continue
        net = next(taps)
        option = f"fd={net.tap},mac={mac}"
        option += f",vhost=on,vhostfd={net.vhost}" if net.vhost is not None else ",vhost=off"
        argv += ["--net", option]
    return argv


PASST_GUEST_ADDR = "10.0.2.15"  # qumran-vmm gives passt QEMU's user-mode addresses


def check_user_nic(index: int, nic: Nic) -> None:
    """A user NIC runs on passt: it must be installed, and a forward goes to the guest's
    own address (passt knows no other)."""
    if shutil.which("passt") is None and not Path("/usr/bin/passt").exists():
        raise InvalidArgument(
            f"nics[{index}]: a user NIC on hypervisor: native needs passt, which is not "
            "installed (Debian: apt install passt); or attach the NIC to a network"
        )
    for rule, fwd in zip(nic.forward, nic.forwards, strict=True):
        if fwd.guest_addr not in ("", PASST_GUEST_ADDR):
            raise InvalidArgument(
                f"nics[{index}].forward: {rule!r}: qumran-vmm forwards to the guest's own "
                f"address ({PASST_GUEST_ADDR}); leave the guest address out"
            )


def in_definition_terms(message: str, served: dict[int, Path]) -> str:
    """qumran-vmm's words about a ``--disk vhost-user=SOCKET`` (a back end it refused), in
    the definition's terms: the disk's field."""
    for index, sock in served.items():
        message = message.replace(f"--disk vhost-user={sock}", f"disks[{index}]")
    return message


class NativeInstance(Instance):
    def __init__(self, process: Spawned, paths: RunPaths, control: VmmControl,
                 disks: StorageDaemon | None = None) -> None:  # fmt: skip
        super().__init__(process, paths)
        self.control = control
        self.storage = disks
        self._reaper: asyncio.Task[None] | None = None
        if disks is not None:
            self._reaper = asyncio.create_task(self._stop_storage_with_vm(disks))

    async def _stop_storage_with_vm(self, disks: StorageDaemon) -> None:
        """The storage daemon lives as long as qumran-vmm: stopped once it exits."""
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        try:
            pidfd = self.process.pidfd()
        except ProcessLookupError:
            pidfd = -1
        if pidfd >= 0:
            loop.add_reader(pidfd, exited.set)
            try:
                await exited.wait()
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
        await disks.stop()

    async def powerdown(self) -> None:
        await self.control.call("shutdown")

    async def reset(self) -> None:
        await self.control.call("reset")

    async def request_reboot(self) -> None:
        raise InvalidState(
            "qumran-vmm VMs have no keyboard to send Ctrl-Alt-Del to; reboot the guest from"
            " inside, or shut it down and start it again"
        )

    async def pause(self) -> None:
        await self.control.call("pause")

    async def resume(self) -> None:
        await self.control.call("resume")

    async def is_paused(self) -> bool:
        return (await self.control.call("status")).get("state") == "paused"

    async def save(self, target: str | int) -> None:
        if isinstance(target, int):
            await self.control.call("snapshot", {"fd": True}, fd=target)
        else:
            await self.control.call("snapshot", {"path": target})
        await self.control.call("pause")  # it ran on after the snapshot; hold it for the end

    async def block_io(self) -> tuple[int, int] | None:
        """Bytes read and written by the guest's disks since its last boot (the control
        socket's per-device counters); None without a disk."""
        devices = (await self.control.call("status")).get("devices", [])
        disks = [d for d in devices if isinstance(d, dict) and d.get("type") == "disk"]
        if not disks:
            return None
        read = sum(int(d.get("read_bytes", 0)) for d in disks)
        written = sum(int(d.get("write_bytes", 0)) for d in disks)
        if self.storage is not None:  # qcow2 disks: counted by the storage daemon
            more = await self.storage.block_io()
            read, written = read + more[0], written + more[1]
        return read, written

    async def close(self) -> None:
        """Let go of qumran-vmm and its storage daemon; both go on running."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self.storage is not None:
            if self.process.state() is ProcState.GONE:  # the VM ended: so does its storage
                await self.storage.stop()
            else:
                await self.storage.close()
        await self.control.close()


class NativeDriver(Driver):
    name = "native"
    program = "qumran-vmm"
    snapshots = True

    def __init__(
        self, binary: str | None = None, *, probe: Callable[[], AccelChoice] | None = None
    ) -> None:
        self.binary = binary or vmm_binary()
        self.probe = probe  # tests give their own host

    def host_info(self) -> HostInfo:
        from qumran.drivers.qemu.accel import choose_accel

        choice = (self.probe or choose_accel)()  # QEMU's host check: vmx/svm and /dev/kvm
        if choice.accel == "kvm":
            return HostInfo(self.name, "kvm", choice.reason, "qumran-vmm", True)
        why = choice.reason.removeprefix("TCG: ")
        return HostInfo(self.name, "kvm", f"needs a hardware KVM: {why}", "qumran-vmm", False)

    def check(self, spec: VmSpec, owner: Owner) -> None:
        host = self.host_info()
        if not host.available:
            # Refused at define (and at each start), in the definition's terms: qumran-vmm's
            # own refusal would come only at start, naming a flag of its own.
            raise InvalidArgument(
                f"hypervisor: native cannot run on this host: qumran-vmm {host.reason}; "
                "use hypervisor: qemu, which emulates the CPU (TCG) where there is no KVM"
            )
        if not isinstance(spec.boot, KernelBoot):
            raise InvalidArgument("boot: qumran-vmm boots a kernel; disk boot needs QEMU")
        for i, disk in enumerate(spec.disks):
            if "," in str(disk.path):  # qumran-vmm's --disk takes PATH[,ro]
                raise InvalidArgument(
                    f"disks[{i}].path: qumran-vmm cannot open a path with a comma in it"
                    f" ({disk.path}); rename the image or link to it"
                )
            if disk.format in storage.SERVED_FORMATS and storage.binary() is None:
                raise InvalidArgument(
                    f"disks[{i}].format: qumran-vmm serves {disk.format} images through "
                    f"{storage.QSD}, which is not installed (Debian: qemu-utils); install it, "
                    f"or convert the image (qemu-img convert -O raw {disk.path} NEW.img)"
                )
            if disk.format not in ("raw", *storage.SERVED_FORMATS):
                raise InvalidArgument(
                    f"disks[{i}].format: qumran-vmm reads raw and qcow2 images, not "
                    f"{disk.format}; convert it or use hypervisor: qemu"
                )
        for i, nic in enumerate(spec.nics):
            if nic.network is None:
                check_user_nic(i, nic)
        if spec.graphics:
            raise InvalidArgument("graphics: qumran-vmm has no display; use hypervisor: qemu")
        check_seed(spec, owner)
        check_files(spec, owner)

    def command(self, spec: VmSpec, fds: HandoffFds) -> list[str]:
        return build_argv(spec, fds, self.binary, _SERVED.get())

    async def launch(
        self,
        spec: VmSpec,
        paths: RunPaths,
        owner: Owner,
        events: EventSink,
        *,
        seed: bytes | None = None,
        nets: tuple[NetFds, ...] = (),
        restore: int | None = None,
    ) -> Instance:
        """The storage daemon first (its disks' sockets listening, or the reason it could
        not open them), then qumran-vmm; a failure of either leaves neither running."""
        exports = storage.exports_of(spec)
        if not exports:
            return await super().launch(spec, paths, owner, events, seed=seed, nets=nets,
                                        restore=restore)  # fmt: skip
        self.check(spec, owner)  # before a storage daemon opens anything
        disks = await StorageDaemon.start(spec, exports, paths, owner)
        served = {e.index: storage.socket_path(paths, e.index) for e in exports}
        tokens = (_SERVED.set(served), _STORAGE.set(disks))
        try:
            return await super().launch(spec, paths, owner, events, seed=seed, nets=nets)
        except HypervisorError as exc:
            await disks.stop()
            raise HypervisorError(in_definition_terms(exc.message, served)) from None
        except BaseException:
            await disks.stop()
            raise
        finally:
            _SERVED.reset(tokens[0])
            _STORAGE.reset(tokens[1])

    async def open_instance(
        self,
        spec: VmSpec,
        process: Spawned,
        paths: RunPaths,
        monitor: socket.socket,
        events: EventSink,
        *,
        stopped: bool = False,
    ) -> NativeInstance:
        control = VmmControl(spec.name)
        await control.connect(monitor)
        if not stopped:
            await control.call("status")  # the VMM is up and answering
        disks = _STORAGE.get()
        if disks is None and storage.exports_of(spec):  # re-attaching: find it again
            disks = await StorageDaemon.adopt(spec, paths)
        return NativeInstance(process, paths, control, disks)
