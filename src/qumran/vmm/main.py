"""qumran-vmm: one process per VM.

    qumran-vmm --name N --kernel bzImage [--initrd F] [--cmdline S] [--memory 256M]
               [--vcpus 2] [--console stdio|socket:PATH|none] [--control PATH]

Exit status: 0 when the guest powers off or the VM is told to quit (control ``quit``,
SIGTERM, SIGINT, SIGHUP); 1 for bad input or a host that cannot run the VM (one line on
stderr, nothing left behind); 2 when the guest crashes (triple fault, KVM error).
A guest reboot restarts the guest inside the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from pathlib import Path

from qumran.errors import QumranError
from qumran.vmm.builder import VmSpec, build_machine
from qumran.vmm.console import Console, open_console
from qumran.vmm.control import ControlServer
from qumran.vmm.events import GuestEvent, GuestEventNotice
from qumran.vmm.machine import Machine
from qumran.vmm.proctitle import set_thread_name
from qumran.vmm.vcpu import install_kick_handler

log = logging.getLogger("qumran.vmm")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CRASHED = 2
DEFAULT_CMDLINE = "console=ttyS0 panic=-1"
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
    p.add_argument("--kvm-device", default="/dev/kvm", help=argparse.SUPPRESS)
    p.add_argument("--log-level", default=os.environ.get("QUMRAN_VMM_LOG", "WARNING"))
    return p.parse_args(argv)


class VmmProcess:
    """Owns the machine, the console, the control socket and the signal handling."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.events: asyncio.Queue[GuestEventNotice | None] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.console: Console | None = None
        self.control: ControlServer | None = None
        self.machine: Machine | None = None

    def notify(self, notice: GuestEventNotice) -> None:
        """Thread-safe: guest events come from vCPU threads."""
        with contextlib.suppress(RuntimeError):  # the loop is closing: we are exiting anyway
            self.loop.call_soon_threadsafe(self.events.put_nowait, notice)

    def quit(self) -> None:
        self.events.put_nowait(None)

    async def run(self) -> int:
        a = self.args
        spec = VmSpec(
            a.name, a.kernel, a.initrd, a.cmdline, a.memory, a.vcpus, a.force_kvm, a.kvm_device
        )
        try:
            self.console = open_console(a.console)
        except ValueError as exc:
            raise QumranError(str(exc)) from None
        try:
            self.machine = build_machine(spec, self.console.write, self.notify)
            if a.control:
                self.control = ControlServer(a.control, self.machine, self.quit)
                await self.control.start()
            await self.console.start()
            self.console.on_input = self.machine.feed_console
            self.console.on_quit = self.quit
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self.loop.add_signal_handler(sig, self.quit)
            self.machine.start()
            return await self._supervise(self.machine)
        finally:
            self._cleanup()

    async def _supervise(self, machine: Machine) -> int:
        while True:
            notice = await self.events.get()
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
                    self._drain_stale_events()
                case GuestEvent.CRASH:
                    print(
                        f"qumran-vmm: {a_name(self.args)}: guest crashed: {notice.detail}",
                        file=sys.stderr,
                    )
                    return EXIT_CRASHED

    def _drain_stale_events(self) -> None:
        """Events raised by the boot that was just torn down are void; quits are kept."""
        keep_quit = False
        while not self.events.empty():
            if self.events.get_nowait() is None:
                keep_quit = True
        if keep_quit:
            self.quit()

    def _cleanup(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.remove_signal_handler(sig)
        if self.machine is not None:
            self.machine.close()
        if self.control is not None:
            self.control.close()
        if self.console is not None:
            self.console.close()


def a_name(args: argparse.Namespace) -> str:
    return str(args.name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="qumran-vmm %(levelname)s %(name)s: %(message)s"
    )
    set_thread_name(args.name)
    install_kick_handler()
    try:
        return asyncio.run(_run(args))
    except QumranError as exc:
        print(f"qumran-vmm: error: {exc.message}", file=sys.stderr)
        log.debug("startup failed", exc_info=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK


async def _run(args: argparse.Namespace) -> int:
    return await VmmProcess(args).run()


if __name__ == "__main__":
    sys.exit(main())
