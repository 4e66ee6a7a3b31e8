"""A stand-in VM process for tests: ``python -m qumran.drivers.fakevm --name N ...``.

It is a real process, so ``kill -9``, ``kill -STOP`` and ``kill -CONT`` behave exactly as
for a hypervisor, but it starts in a few tens of milliseconds and needs no kernel.

- Console, a UNIX socket at ``--console`` (a path, or ``fd=N``: an inherited listening
  socket, as qumrand passes it; none for a VM without a serial port): the
  "guest" prints :data:`READY_LINE` at boot and echoes what it is sent. Everything
  printed is appended to ``--console-log`` (a path or ``fd=N``). Unlike QEMU, output
  printed while no client is connected is kept (up to 64 KiB) for the next client, so a
  test never races the boot. Lines typed ``poweroff``, ``reboot`` or ``panic`` act like
  those in a guest.
- Monitor, a UNIX socket at ``--monitor`` (a path or ``fd=N``): JSON lines. A request is
  ``{"execute": CMD}``; the reply ``{"return": VALUE}`` or ``{"error": MESSAGE}``. Events
  arrive as ``{"event": NAME, "detail": TEXT}`` with NAME one of the values of
  :class:`qumran.drivers.base.GuestEvent`, plus ``host-shutdown`` for SIGTERM.
  Commands: ``powerdown`` (shutdown event, exit 0 after ``--powerdown-delay``),
  ``reset`` (ready line again), ``ctrl-alt-del`` (the guest reboots a moment later),
  ``stop``/``cont`` (input is held while paused), ``query-status``
  (``{"status": "running"|"paused"}``), and the guest's own actions ``guest-poweroff``,
  ``guest-reboot``, ``guest-panic``.
- ``--fail MESSAGE`` prints ``fakevm: MESSAGE`` and exits 1, as a hypervisor that
  refuses a definition would.

Only the standard library is imported, to keep start-up fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import signal
import socket
import sys
from pathlib import Path
from typing import Any

READY_LINE = "FAKE-VM READY"
HELD_OUTPUT = 64 * 1024
PR_SET_NAME = 15  # include/uapi/linux/prctl.h


class FakeVm:
    def __init__(self, args: argparse.Namespace) -> None:
        self.name: str = args.name
        self.powerdown_delay: float = args.powerdown_delay
        log: Any = _inherited(args.console_log)
        if log is None:
            log = args.console_log
        self.log = open(log, "ab", buffering=0)  # noqa: SIM115 (lives as long as the VM)
        self.consoles: set[asyncio.StreamWriter] = set()
        self.monitors: set[asyncio.StreamWriter] = set()
        self.held = bytearray()  # output nobody has read yet
        self.paused = False
        self.held_input = bytearray()
        self.line = bytearray()
        self.exiting = asyncio.Event()
        self.status = 0

    # -- the "guest" --------------------------------------------------------------------

    def boot(self) -> None:
        self.print(f"{READY_LINE}\r\n".encode())

    def print(self, data: bytes) -> None:
        self.log.write(data)
        if not self.consoles:
            self.held += data
            del self.held[:-HELD_OUTPUT]
        for writer in list(self.consoles):
            writer.write(data)

    def type(self, data: bytes) -> None:
        if self.paused:
            self.held_input += data
            return
        self.print(data)
        for byte in data:
            if byte in b"\r\n":
                self.command(self.line.decode(errors="replace").strip())
                self.line.clear()
            else:
                self.line.append(byte)

    def command(self, line: str) -> None:
        actions = {"poweroff": self.guest_poweroff, "reboot": self.guest_reboot}
        if line in actions:
            actions[line]()
        elif line == "panic":
            self.guest_panic()

    def guest_poweroff(self, reason: str = "guest-shutdown") -> None:
        self.emit("shutdown", reason)
        self.exit(0)

    def guest_reboot(self) -> None:
        self.emit("reset", "guest-reset")
        self.boot()

    def guest_panic(self) -> None:
        # QEMU's default panic action: report it, then shut down (qapi/run-state.json).
        self.emit("crash", "guest panicked (action: poweroff)")
        self.guest_poweroff("guest-panic")

    def host_shutdown(self) -> None:
        # SIGTERM, as QEMU handles it: report a host-initiated shutdown, exit 0.
        self.emit("host-shutdown", "host-signal")
        self.exit(0)

    def exit(self, status: int) -> None:
        self.status = status
        self.exiting.set()

    # -- the monitor --------------------------------------------------------------------

    def emit(self, event: str, detail: str = "") -> None:
        line = json.dumps({"event": event, "detail": detail}).encode() + b"\n"
        for writer in list(self.monitors):
            writer.write(line)

    async def execute(self, command: str) -> Any:
        match command:
            case "powerdown":
                asyncio.get_running_loop().call_later(self.powerdown_delay, self.guest_poweroff)
            case "reset":  # like QEMU's RESET with guest: false, which the daemon ignores
                self.boot()
            case "ctrl-alt-del":  # the guest's init reboots it, a moment later
                asyncio.get_running_loop().call_later(self.powerdown_delay, self.guest_reboot)
                self.boot()
            case "stop":
                self.paused = True
                self.emit("stop")
            case "cont":
                self.paused = False
                self.emit("resume")
                held, self.held_input = bytes(self.held_input), bytearray()
                self.type(held)
            case "query-status":
                return {"status": "paused" if self.paused else "running"}
            case "guest-poweroff":
                asyncio.get_running_loop().call_soon(self.guest_poweroff)
            case "guest-reboot":
                self.guest_reboot()
            case "guest-panic":
                asyncio.get_running_loop().call_soon(self.guest_panic)
            case _:
                raise ValueError(f"unknown command {command!r}")
        return {}

    async def serve_monitor(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.monitors.add(writer)
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    reply = {"return": await self.execute(str(request["execute"]))}
                except (ValueError, KeyError, TypeError) as exc:
                    reply = {"error": str(exc)}
                writer.write(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass
        finally:
            self.monitors.discard(writer)
            writer.close()

    async def serve_console(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.consoles.add(writer)
        if self.held:
            writer.write(bytes(self.held))
            self.held.clear()
        try:
            while data := await reader.read(4096):
                self.type(data)
        except OSError:
            pass
        finally:
            self.consoles.discard(writer)
            writer.close()


async def run(args: argparse.Namespace) -> int:
    vm = FakeVm(args)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, vm.host_shutdown)
    paths = [Path(p) for p in (args.console, args.monitor) if p and _inherited(p) is None]
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    # The console listens before the monitor, as with QEMU: a monitor that answers
    # implies a console that accepts. No --console: a VM without a serial port.
    servers = []
    if args.console:
        servers.append(await _serve(vm.serve_console, args.console))
    servers.append(await _serve(vm.serve_monitor, args.monitor))
    vm.boot()
    await vm.exiting.wait()
    for writer in [*vm.monitors, *vm.consoles]:
        with contextlib.suppress(OSError):
            await writer.drain()
    for server in servers:
        server.close()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return vm.status


def _inherited(where: str) -> int | None:
    """The fd number of ``fd=N``, else None (a path)."""
    if where.startswith("fd=") and where[3:].isdigit():
        return int(where[3:])
    return None


async def _serve(handler: Any, where: str) -> asyncio.AbstractServer:
    fd = _inherited(where)
    if fd is None:
        return await asyncio.start_unix_server(handler, where)
    sock = socket.socket(fileno=fd)
    sock.listen(16)  # SO_PEERCRED of later clients: this process (see qumran.vmm.sockets)
    return await asyncio.start_unix_server(handler, sock=sock)


def set_process_name(name: str) -> None:
    """Name the process as QEMU's ``-name process=`` does, so ps and top show the VM."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fakevm", description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--console", help="socket path; none: the VM has no serial port")
    parser.add_argument("--console-log", required=True)
    parser.add_argument("--monitor", required=True)
    parser.add_argument("--powerdown-delay", type=float, default=0.1)
    parser.add_argument("--fail")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    set_process_name(f"qumran-{args.name}")
    if args.fail:
        print(f"fakevm: {args.fail}", file=sys.stderr)
        return 1
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
