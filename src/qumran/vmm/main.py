"""qumran-vmm: one process per VM.

    qumran-vmm --name N --kernel bzImage [--initrd F] [--cmdline S] [--memory 256M]
               [--vcpus 2] [--console stdio|socket:PATH|none] [--control PATH]
               [--disk PATH[,ro]]... [--net tap=NAME|fd=N[,mac=MAC]]... [--rng]
               [--virtio-console socket:PATH]

Exit status: 0 when the guest powers off or the VM is told to quit (control ``quit``,
SIGTERM, SIGINT, SIGHUP); 1 for bad input or a host that cannot run the VM (one line on
stderr, nothing left behind); 2 when the guest crashes (triple fault, KVM error).
A guest reboot restarts the guest inside the same process.

Start-up order: check every input, bind the sockets, start the vCPUs, and only then import
asyncio and serve the sockets, so the guest boots while the rest of Python loads.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from qumran.errors import QumranError
from qumran.vmm.builder import VmSpec, build_machine
from qumran.vmm.console import Console, open_console
from qumran.vmm.control import ControlServer
from qumran.vmm.devices.virtio.backends import DeviceSpecs, DiskSpec, NetSpec
from qumran.vmm.devices.virtio.console import ConsolePort
from qumran.vmm.events import GuestEvent, GuestEventNotice
from qumran.vmm.machine import Machine
from qumran.vmm.proctitle import set_thread_name
from qumran.vmm.vcpu import install_kick_handler

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("qumran.vmm")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CRASHED = 2
DEFAULT_CMDLINE = "console=ttyS0 panic=-1"
QUIT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_UNITS = {"": 20, "K": 10, "M": 20, "G": 30, "T": 40}  # a bare number is MiB, as in QEMU


def parse_memory(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"invalid memory size {text!r} (e.g. 256M, 1G)")
    return int(m.group(1)) << _UNITS[m.group(2).upper()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="qumran-vmm", description="Run one VM on /dev/kvm.")
    p.add_argument("--name", required=True, help="VM name (also the process name)")
    p.add_argument("--kernel", required=True, type=Path, help="bzImage to boot")
    p.add_argument("--initrd", type=Path, help="initial ramdisk")
    p.add_argument("--cmdline", default=DEFAULT_CMDLINE, help="kernel command line")
    p.add_argument("--memory", type=parse_memory, default=parse_memory("256M"))
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--console", default="stdio", help="stdio, socket:PATH or none")
    p.add_argument("--control", help="path of the JSON control socket")
    p.add_argument("--force-kvm", action="store_true", help="skip the vmx/svm host check")
    p.add_argument("--disk", action="append", default=[], metavar="PATH[,ro]",
                   help="raw disk image as virtio-blk (repeatable)")  # fmt: skip
    p.add_argument("--net", action="append", default=[], metavar="tap=NAME[,mac=MAC]",
                   help="virtio-net on a TAP (created by name, or fd=N) (repeatable)")  # fmt: skip
    p.add_argument("--rng", action="store_true", help="virtio-rng fed from /dev/urandom")
    p.add_argument("--virtio-console", metavar="socket:PATH", help="hvc0 as a second console")
    p.add_argument("--kvm-device", default="/dev/kvm", help=argparse.SUPPRESS)
    p.add_argument("--log-level", default=os.environ.get("QUMRAN_VMM_LOG", "WARNING"))
    return p.parse_args(argv)


class EventRelay:
    """Guest events and quit requests, from any thread, to the supervisor.

    Until the event loop runs they are kept; then each is handed to the loop.
    ``None`` means "quit".
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[GuestEventNotice | None] = []
        self._deliver: Callable[[GuestEventNotice | None], None] | None = None

    def push(self, notice: GuestEventNotice | None) -> None:
        with self._lock:
            if self._deliver is None:
                self._pending.append(notice)
                return
            deliver = self._deliver
        deliver(notice)

    def quit(self) -> None:
        self.push(None)

    def attach(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[GuestEventNotice | None]
    ) -> None:
        def deliver(notice: GuestEventNotice | None) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed: the process is exiting
                loop.call_soon_threadsafe(queue.put_nowait, notice)

        with self._lock:
            self._deliver = deliver
            pending, self._pending = self._pending, []
        for notice in pending:
            queue.put_nowait(notice)


class VmmProcess:
    """Owns the machine, the console, the control socket and the signal handling."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.relay = EventRelay()
        self.console: Console | None = None
        self.hvc: Console | None = None
        self.control: ControlServer | None = None
        self.machine: Machine | None = None

    def run(self) -> int:
        a = self.args
        disks = tuple(DiskSpec.parse(d) for d in a.disk)  # parsed before any socket exists
        nets = tuple(NetSpec.parse(n) for n in a.net)
        for sig in QUIT_SIGNALS:
            signal.signal(sig, self._on_signal)
        try:  # from here on, whatever was created is removed again on the way out
            try:
                self.console = open_console(a.console)
                self.hvc = open_console(a.virtio_console) if a.virtio_console else None
            except ValueError as exc:
                raise QumranError(str(exc)) from None
            port = None
            if self.hvc is not None:
                port = ConsolePort(self.hvc.write)
                self.hvc.on_input = port.feed
            devices = DeviceSpecs(disks, nets, a.rng, port)
            spec = VmSpec(a.name, a.kernel, a.initrd, a.cmdline, a.memory, a.vcpus, a.force_kvm,
                          a.kvm_device, devices)  # fmt: skip
            self.machine = build_machine(spec, self.console.write, self.relay.push)
            if a.control:
                self.control = ControlServer(a.control, self.machine, self.relay.quit)
            self.console.on_input = self.machine.feed_console
            self.console.on_quit = self.relay.quit
            self.console.prepare()
            self.machine.start()
            log.info("guest started %.2f s after exec", _since_exec())
            import asyncio  # deliberately late: see the module docstring

            return asyncio.run(self._serve(self.machine))
        finally:
            self._cleanup()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: quitting", signum)
        self.relay.quit()

    async def _serve(self, machine: Machine) -> int:
        import asyncio

        queue: asyncio.Queue[GuestEventNotice | None] = asyncio.Queue()
        self.relay.attach(asyncio.get_running_loop(), queue)
        if self.control is not None:
            await self.control.start()
        assert self.console is not None
        await self.console.start()
        if self.hvc is not None:
            await self.hvc.start()
        while True:
            notice = await queue.get()
            if notice is not None and notice.boot != machine.reboots:
                log.debug("ignoring %s from an earlier boot", notice.event.value)
                continue
            status = self._handle(machine, notice)
            if status is not None:
                return status

    def _handle(self, machine: Machine, notice: GuestEventNotice | None) -> int | None:
        """The exit status, or None to keep running."""
        if notice is None:
            log.info("quit requested")
            return EXIT_OK
        match notice.event:
            case GuestEvent.POWEROFF:
                log.info("guest powered off")
                return EXIT_OK
            case GuestEvent.REBOOT:
                log.info("guest reboot (%s)", notice.detail)
                machine.reboot()
                return None
            case GuestEvent.CRASH:
                print(f"qumran-vmm: {self.args.name}: guest crashed: {notice.detail}",
                      file=sys.stderr)  # fmt: skip
                return EXIT_CRASHED

    def _cleanup(self) -> None:
        if self.machine is not None:
            self.machine.close()
        if self.control is not None:
            self.control.close()
        if self.console is not None:
            self.console.close()
        if self.hvc is not None:
            self.hvc.close()


def _since_exec() -> float:
    """Seconds since this process was exec'd (/proc/self/stat start time, in clock ticks)."""
    try:
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - start / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="qumran-vmm %(levelname)s %(name)s: %(message)s"
    )
    set_thread_name(args.name)
    install_kick_handler()
    try:
        return VmmProcess(args).run()
    except QumranError as exc:
        print(f"qumran-vmm: error: {exc.message}", file=sys.stderr)
        log.debug("start-up failed", exc_info=True)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
