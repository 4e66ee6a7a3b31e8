"""The QEMU driver: one ``qemu-system-x86_64`` process per VM, driven over QMP.

The launch itself is every driver's (:mod:`qumran.drivers.startup`): this module gives
it QEMU's command line and opens the QMP session. If QEMU exits on the way, its own
error text (from its log) becomes the error, because that tells a person what to fix.
"""

from __future__ import annotations

import socket

from qumran.config.spec import VmSpec
from qumran.drivers.base import Driver, EventSink, HandoffFds, HostInfo, Owner, RunPaths
from qumran.drivers.checks import check_files
from qumran.drivers.process import Spawned
from qumran.drivers.qemu.accel import AccelChoice, choose_accel, qemu_version
from qumran.drivers.qemu.cmdline import QEMU_BINARY, Accel, build_argv
from qumran.drivers.qemu.instance import QemuInstance
from qumran.drivers.qemu.monitor import QmpMonitor
from qumran.drivers.qemu.ports import check_ports
from qumran.drivers.seed import check_seed

START_TIMEOUT = 30.0  # seconds from exec to a QMP session; QEMU itself needs ~50 ms


class QemuDriver(Driver):
    name = "qemu"
    program = "QEMU"

    def __init__(
        self,
        *,
        binary: str = QEMU_BINARY,
        accel: Accel | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        """``accel`` forces an accelerator (tests); by default it is chosen from the host."""
        self.binary = binary
        self.start_timeout = start_timeout
        self._forced = accel
        self._choice: AccelChoice | None = None

    @property
    def accel(self) -> AccelChoice:
        if self._choice is None:
            if self._forced is not None:
                self._choice = AccelChoice(self._forced, f"{self._forced.upper()}: forced")
            else:
                self._choice = choose_accel()
        return self._choice

    def host_info(self) -> HostInfo:
        version = qemu_version(self.binary)
        if version is None:
            return HostInfo(self.name, "none", f"{self.binary} does not run", "", False)
        return HostInfo(self.name, self.accel.accel, self.accel.reason, version)

    def check(self, spec: VmSpec, owner: Owner) -> None:
        check_ports(spec, owner)
        check_files(spec, owner)
        check_seed(spec, owner)

    def command(self, spec: VmSpec, fds: HandoffFds) -> list[str]:
        return build_argv(spec, fds, self.accel.accel, self.binary)

    async def open_instance(
        self,
        spec: VmSpec,
        process: Spawned,
        paths: RunPaths,
        monitor: socket.socket,
        events: EventSink,
        *,
        stopped: bool = False,
    ) -> QemuInstance:
        qmp = QmpMonitor(spec.name, events)
        if stopped:
            qmp.connect_later(monitor)  # QEMU greets only after SIGCONT
        else:
            await qmp.connect(monitor)
        return QemuInstance(process, paths, qmp, graphics=spec.graphics)
