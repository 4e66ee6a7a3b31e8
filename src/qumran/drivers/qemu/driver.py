"""The QEMU driver: one ``qemu-system-x86_64`` process per VM, driven over QMP.

Launch reads as one pipeline: check the spec, build the command line, clear stale
sockets, spawn as the owner, wait for the monitor socket while watching the process,
open the QMP session. If QEMU exits on the way, its own error text (from the log file)
becomes the HypervisorError message, because that is what tells a person what to fix.
"""

from __future__ import annotations

import asyncio
import logging

from qumran.config.spec import VmSpec
from qumran.drivers.base import Driver, EventSink, HostInfo, Owner, RunPaths
from qumran.drivers.checks import check_files
from qumran.drivers.process import ProcState, Spawned, spawn
from qumran.drivers.qemu.accel import AccelChoice, choose_accel, qemu_version
from qumran.drivers.qemu.cmdline import QEMU_BINARY, Accel, build_argv, describe, escape
from qumran.drivers.qemu.instance import QemuInstance
from qumran.drivers.qemu.monitor import QmpMonitor
from qumran.drivers.startup import (
    ProcessExited,
    cmdline_mentions,
    file_size,
    kill,
    log_tail,
    remove_stale,
    wait_for_socket,
)
from qumran.errors import HypervisorError, Timeout

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds from exec to a QMP session; QEMU itself needs ~50 ms


class QemuDriver(Driver):
    name = "qemu"

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
        check_files(spec, owner)

    async def launch(
        self, spec: VmSpec, paths: RunPaths, owner: Owner, events: EventSink
    ) -> QemuInstance:
        self.check(spec, owner)
        argv = build_argv(spec, paths, self.accel.accel, self.binary)
        remove_stale((paths.monitor, paths.console, paths.vnc, paths.pidfile))
        log_offset = file_size(paths.log)
        log.info("VM %s: starting %s", spec.name, describe(argv))
        try:
            process = spawn(argv, owner, paths.log)
        except OSError as exc:
            raise HypervisorError(f"cannot run {self.binary}: {exc.strerror}") from exc
        monitor = QmpMonitor(spec.name, events)
        try:
            async with asyncio.timeout(self.start_timeout):
                sock = await wait_for_socket(process, paths.monitor)
                await monitor.connect(sock)
        except TimeoutError:
            await kill(process)
            raise Timeout(
                f"QEMU for VM {spec.name} did not open its monitor within "
                f"{self.start_timeout:g} s; it was killed. Its output: "
                f"{log_tail(paths.log, log_offset) or '(none)'}"
            ) from None
        except BaseException as exc:
            await kill(process)
            if isinstance(exc, ProcessExited | HypervisorError):
                raise HypervisorError(
                    f"QEMU failed to start VM {spec.name}: {log_tail(paths.log, log_offset) or exc}"
                ) from exc
            raise
        return QemuInstance(process, paths, monitor)

    async def attach(
        self, spec: VmSpec, paths: RunPaths, pid: int, events: EventSink
    ) -> QemuInstance:
        process = Spawned(pid)
        state = process.state()
        if state is ProcState.GONE:
            raise HypervisorError(f"the QEMU process {pid} of VM {spec.name} is gone")
        if not cmdline_mentions(pid, f"path={escape(str(paths.monitor))},"):
            raise HypervisorError(
                f"process {pid} is not the QEMU of VM {spec.name} "
                f"(its command line does not name {paths.monitor})"
            )
        monitor = QmpMonitor(spec.name, events)
        if state is ProcState.STOPPED:
            monitor.connect_later(str(paths.monitor))
        else:
            try:
                async with asyncio.timeout(self.start_timeout):
                    await monitor.connect(str(paths.monitor))
            except TimeoutError:
                await monitor.close()
                raise Timeout(
                    f"the monitor of VM {spec.name} did not answer within "
                    f"{self.start_timeout:g} s (is another client connected to it?)"
                ) from None
        return QemuInstance(process, paths, monitor)
