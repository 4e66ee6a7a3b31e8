"""The demo guest boots under QEMU (TCG), answers on its serial console and powers off on
the ACPI power button. QEMU is driven directly here: no daemon involved."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from qemu.qmp import ConnectError, QMPClient

from qumran.images.demo import READY_LINE, DemoImage, build_demo

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]

BOOT_TIMEOUT = 120.0
POWERDOWN_TIMEOUT = 30.0


class Guest:
    """A demo guest in a QEMU process: its serial console on stdio, QMP on a socket."""

    def __init__(self, proc: asyncio.subprocess.Process, qmp: QMPClient) -> None:
        self.proc = proc
        self.qmp = qmp
        self.console = bytearray()

    async def expect(self, text: str, timeout: float) -> str:
        """Read the console until ``text`` appears; return everything read so far."""
        assert self.proc.stdout is not None
        needle = text.encode()
        try:
            async with asyncio.timeout(timeout):
                while needle not in self.console:
                    chunk = await self.proc.stdout.read(4096)
                    if not chunk:
                        raise AssertionError(f"console closed before {text!r}: {self.text()}")
                    self.console += chunk
        except TimeoutError:
            raise AssertionError(f"no {text!r} within {timeout} s: {self.text()}") from None
        return self.text()

    async def exits(self, timeout: float) -> int:
        """Wait for QEMU to exit, reading the console meanwhile; return its status."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while chunk := await self.proc.stdout.read(4096):
                    self.console += chunk
                return await self.proc.wait()
        except TimeoutError:
            raise AssertionError(f"QEMU still running after {timeout} s: {self.text()}") from None

    async def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    def text(self) -> str:
        return self.console.decode(errors="replace")


@contextlib.asynccontextmanager
async def running(image: DemoImage, tmp: Path) -> AsyncIterator[Guest]:
    qmp_path = tmp / "qmp.sock"
    proc = await asyncio.create_subprocess_exec(
        "qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-m", "256",
        "-display", "none", "-monitor", "none",
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        "-qmp", f"unix:{qmp_path},server=on,wait=off",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", image.cmdline,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    qmp = QMPClient("demo")
    try:
        await _connect(qmp, qmp_path)
        yield Guest(proc, qmp)
    finally:
        with contextlib.suppress(EOFError):  # QEMU already gone
            await qmp.disconnect()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _connect(qmp: QMPClient, path: Path) -> None:
    """Connect once QEMU listens (the socket file appears just before ``listen``)."""
    async with asyncio.timeout(10):
        while True:
            try:
                await qmp.connect(str(path))
                return
            except ConnectError:
                await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def demo_image(tmp_path_factory: pytest.TempPathFactory) -> DemoImage:
    return build_demo()


def test_demo_boots_answers_and_powers_off(demo_image: DemoImage, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(demo_image, tmp_path) as guest:
            await guest.expect(READY_LINE, BOOT_TIMEOUT)
            await guest.type("echo hello-$((6*7))")
            await guest.expect("hello-42", 30)
            await guest.qmp.execute("system_powerdown")
            assert await guest.exits(POWERDOWN_TIMEOUT) == 0

    asyncio.run(scenario())


def test_poweroff_typed_in_the_shell_stops_qemu(demo_image: DemoImage, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(demo_image, tmp_path) as guest:
            await guest.expect(READY_LINE, BOOT_TIMEOUT)
            await guest.type("poweroff")
            assert await guest.exits(POWERDOWN_TIMEOUT) == 0

    asyncio.run(scenario())


def test_reboot_typed_in_the_shell_comes_back(demo_image: DemoImage, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(demo_image, tmp_path) as guest:
            await guest.expect(READY_LINE, BOOT_TIMEOUT)
            guest.console.clear()
            await guest.type("reboot")
            await guest.expect(READY_LINE, BOOT_TIMEOUT)
            assert guest.proc.returncode is None

    asyncio.run(scenario())
