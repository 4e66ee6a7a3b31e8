"""qumran-vmm: one process per VM.

    qumran-vmm --name N --kernel bzImage [--initrd F] [--cmdline S] [--memory 256M]
               [--vcpus 2] [--console stdio|socket:PATH|none] [--console-log PATH]
               [--control PATH]
               [--disk PATH[,ro]|fd=N[,ro]|vhost-user=SOCKET]...
               [--net tap=NAME|fd=N[,mac=MAC][,vhost=on|off]]... [--rng]
               [--net passt[,mac=MAC][,forward=tcp:127.0.0.1:2222-:22]...]
               [--virtio-console socket:PATH]
    qumran-vmm --restore SNAPSHOT [--name N] [--console ...] [--control PATH] ...

Exit status: 0 when the guest powers off or the VM is told to quit (control ``quit``,
SIGTERM, SIGINT, SIGHUP); 1 for bad input or a host that cannot run the VM (one line on
stderr, nothing left behind); 2 when the guest crashes (triple fault, KVM error).
A guest reboot restarts the guest inside the same process.

Start-up order: check every input, bind the sockets, start the vCPUs, then serve the
sockets and the console on the main thread (:mod:`qumran.vmm.mainloop`).

The process stays small (BENCHMARKS.md, "qumran-vmm against QEMU"): the kernel and initrd
are read into guest memory from their files, and the modules on this path stay clear of
asyncio, logging, dataclasses, typing and pathlib, which together would more than double
the VMM's own resident memory. So do the virtio devices' modules, which also keep clear of
secrets (hmac, libcrypto), subprocess, shutil and socket.py; tests/unit/test_vmm_imports.py
holds that line.
"""

from __future__ import annotations

import os
import signal
import sys

from qumran.errors import QumranError
from qumran.vmm import confine
from qumran.vmm import log as vmm_log
from qumran.vmm.builder import VmSpec, build_machine
from qumran.vmm.cmdline import VmmArgs, parse_or_exit
from qumran.vmm.console import Console, ConsoleLog, ConsoleOutput, open_console
from qumran.vmm.control import ControlServer
from qumran.vmm.events import GuestEvent, GuestEventNotice
from qumran.vmm.machine import Machine
from qumran.vmm.mainloop import MainLoop
from qumran.vmm.proctitle import set_process_title, set_thread_name
from qumran.vmm.vcpu import install_kick_handler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from qumran.vmm.devices.virtio.backends import DeviceSpecs, DiskSpec, NetSpec
    from qumran.vmm.devices.virtio.passt_link import PasstSpec

log = vmm_log.get_logger("qumran.vmm")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CRASHED = 2
QUIT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class VmmProcess:
    """Owns the machine, the consoles, the control socket and the signal handling.

    Guest events and quit requests arrive from vCPU threads and signal handlers; each is
    posted to the main loop, which decides the process's exit status.
    """

    def __init__(self, args: VmmArgs) -> None:
        self.args = args
        self.loop = MainLoop()
        self.console: Console | None = None
        self.console_log: ConsoleLog | None = None
        self.output: ConsoleOutput | None = None
        self.hvc: Console | None = None
        self.control: ControlServer | None = None
        self.machine: Machine | None = None

    def run(self) -> int:
        a = self.args
        device_args = _parse_device_args(a)  # checked before any socket exists
        for sig in QUIT_SIGNALS:
            signal.signal(sig, self._on_signal)
        try:  # from here on, whatever was created is removed again on the way out
            try:
                self.console = open_console(a.console)
                self.hvc = open_console(a.virtio_console) if a.virtio_console else None
                sinks: list[Callable[[bytes], None]] = [self.console.write]
                if a.console_log:
                    self.console_log = ConsoleLog(a.console_log)
                    sinks.insert(0, self.console_log.write)
                self.output = ConsoleOutput(self.loop, sinks)
                output = self.output.write
            except ValueError as exc:
                raise QumranError(str(exc)) from None
            if a.restore is not None:
                from qumran.vmm.snapshot.restore import restore_machine

                self.machine = restore_machine(a.restore, a.name or None, output, self._post,
                                               a.kvm_device, a.force_kvm)  # fmt: skip
            else:
                devices = self._device_specs(*device_args) if device_args is not None else None
                spec = VmSpec(a.name, a.kernel, a.initrd, a.cmdline, a.memory, a.vcpus,
                              a.force_kvm, a.kvm_device, devices)  # fmt: skip
                self.machine = build_machine(spec, output, self._post)
            if a.control:
                self.control = ControlServer(a.control, self.machine, self._quit)
            self.console.on_input = self.machine.feed_console
            self.console.on_quit = self._quit
            self.console.prepare()
            self.machine.start()
            log.info("guest %s %.2f s after exec", "restored" if a.restore else "started",
                     _since_exec())  # fmt: skip
            for server in (self.control, self.console, self.hvc):
                if server is not None:
                    server.start(self.loop)
            return self.loop.run()
        finally:
            self._cleanup()

    def _device_specs(
        self, disks: tuple[DiskSpec, ...], nets: tuple[NetSpec | PasstSpec, ...]
    ) -> DeviceSpecs:
        from qumran.vmm.devices.virtio.backends import DeviceSpecs

        port = None
        if self.hvc is not None:
            from qumran.vmm.devices.virtio.console import ConsolePort

            port = ConsolePort(self.hvc.write)
            self.hvc.on_input = port.feed
        return DeviceSpecs(disks, nets, self.args.rng, port)

    def _post(self, notice: GuestEventNotice) -> None:
        """A guest event, from a vCPU thread (or a device): handled on the main loop."""
        self.loop.call_soon_threadsafe(lambda: self._on_event(notice))

    def _quit(self) -> None:
        self.loop.call_soon_threadsafe(lambda: self.loop.stop(EXIT_OK))

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: quitting", signum)
        self._quit()

    def _on_event(self, notice: GuestEventNotice) -> None:
        machine = self.machine
        assert machine is not None
        if notice.boot != machine.reboots:
            log.debug("ignoring %s from an earlier boot", notice.event.value)
            return
        status = self._handle(machine, notice)
        if status is not None:
            self.loop.stop(status)

    def _handle(self, machine: Machine, notice: GuestEventNotice) -> int | None:
        """The exit status, or None to keep running."""
        match notice.event:
            case GuestEvent.POWEROFF:
                log.info("guest powered off")
                return EXIT_OK
            case GuestEvent.REBOOT:
                log.info("guest reboot (%s)", notice.detail)
                machine.reboot()
                return None
            case GuestEvent.CRASH:
                for line in machine.crash_dump():
                    log.error("%s", line)
                print(f"qumran-vmm: {self.args.name}: guest crashed: {notice.detail}",
                      file=sys.stderr)  # fmt: skip
                return EXIT_CRASHED

    def _cleanup(self) -> None:
        if self.machine is not None:
            self.machine.close()
        if self.output is not None:
            self.output.flush()  # the last bytes, to the log at least
        if self.control is not None:
            self.control.close()
        if self.console is not None:
            self.console.close()
        if self.hvc is not None:
            self.hvc.close()
        if self.console_log is not None:
            self.console_log.close()
        self.loop.close()


def _parse_device_args(
    a: VmmArgs,
) -> tuple[tuple[DiskSpec, ...], tuple[NetSpec | PasstSpec, ...]] | None:
    """The --disk and --net specs, or None without any virtio device: then the virtio
    stack is never imported."""
    if not (a.disk or a.net or a.rng or a.virtio_console):
        return None
    from qumran.vmm.devices.virtio.backends import DiskSpec, parse_net

    return tuple(DiskSpec.parse(d) for d in a.disk), tuple(parse_net(n) for n in a.net)


def _since_exec() -> float:
    """Seconds since this process was exec'd (/proc/self/stat start time, in clock ticks)."""
    try:
        with open("/proc/self/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - start / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    args = parse_or_exit(sys.argv[1:] if argv is None else argv)
    try:
        vmm_log.configure(args.log_level)
    except ValueError as exc:
        print(f"qumran-vmm: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    set_thread_name(args.name or "qumran-vmm")
    if argv is None:  # the program itself, not a test calling main() in its own process
        set_process_title(["qumran-vmm", *sys.argv[1:]])  # not python3's path and ours
        try:
            # Seccomp filters for the threads started from here.
            confine.prepare(args.name or "qumran-vmm")
        except RuntimeError as exc:
            print(f"qumran-vmm: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
    install_kick_handler()
    try:
        return VmmProcess(args).run()
    except QumranError as exc:
        print(f"qumran-vmm: error: {exc.message}", file=sys.stderr)
        log.debug("start-up failed", exc_info=True)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
