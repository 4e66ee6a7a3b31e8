"""The debian-12 image, built once (cached in ~/.cache/qumran/images by its recipe digest,
so later runs reuse it), boots under QEMU TCG two ways:

- from the disk, through SeaBIOS (QEMU's default firmware) and our hand-installed GRUB,
  with a NoCloud seed served over HTTP (``ds=nocloud-net`` in the SMBIOS serial number):
  DHCP, the datasource, the seed's hostname and its ``runcmd`` all show on the console;
- by direct kernel boot from the kernel and initrd kept beside the disk, on a larger
  overlay: growroot grows the partition and cloud-init grows the file system.

QEMU is driven directly: no daemon involved.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import select
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qumran.images import tools
from qumran.images.cache import Image

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(tools.find("qemu-system-x86_64") is None, reason="needs QEMU"),
    pytest.mark.skipif(
        bool(tools.missing(tools.BUILD_TOOLS, grub_pc=True)),
        reason="needs the image build tools (scripts/setup.sh --test installs them)",
    ),
]

# TCG on a shared 2-core machine: 70-95 s measured; under the suite's 600 s test timeout.
BOOT_TIMEOUT = 480.0
HOSTNAME = "qumran-seeded"
MARKER = "QUMRAN-NOCLOUD-RUNCMD-OK"


class Console:
    """A QEMU process whose serial console is its stdout."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-display", "none",
             "-monitor", "none", "-chardev", "stdio,id=console,signal=off",
             "-serial", "chardev:console", *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.output = bytearray()
        self.started = time.monotonic()

    def expect(self, text: str, deadline: float) -> float:
        """Read until ``text`` appears; return the seconds since QEMU started."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        needle = text.encode()
        while needle not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} on the console: ...{self.tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"QEMU exited before {text!r}: ...{self.tail()}")
                self.output += chunk
        return time.monotonic() - self.started

    def tail(self) -> str:
        return self.output[-3000:].decode(errors="replace")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@contextlib.contextmanager
def qemu(argv: list[str]) -> Iterator[Console]:
    console = Console(argv)
    try:
        yield console
    finally:
        console.close()


@contextlib.contextmanager
def nocloud_server(seed: Path) -> Iterator[int]:
    """An HTTP server for a NoCloud seed directory; the guest reaches it as 10.0.2.2."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(seed), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_boots_from_the_disk_through_the_firmware_with_a_nocloud_seed(
    debian_image: Image, tmp_path: Path
) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "meta-data").write_text(f"instance-id: qumran-test-1\nlocal-hostname: {HOSTNAME}\n")
    (seed / "user-data").write_text(f"#cloud-config\nruncmd:\n  - echo {MARKER} > /dev/ttyS0\n")
    with nocloud_server(seed) as port:
        argv = [
            # QEMU's default machine and firmware (SeaBIOS); the disk as a cloud vendor's.
            "-drive", f"file={debian_image.disk},format=qcow2,if=virtio,snapshot=on",
            "-nic", "user,model=virtio-net-pci",
            "-smbios", f"type=1,serial=ds=nocloud-net;s=http://10.0.2.2:{port}/",
        ]  # fmt: skip
        with qemu(argv) as console:
            deadline = time.monotonic() + BOOT_TIMEOUT
            console.expect("GNU GRUB", deadline)
            console.expect("Linux version", deadline)
            login = console.expect(f"{HOSTNAME} login:", deadline)
            console.expect(MARKER, deadline)
            done = console.expect("DataSourceNoCloudNet", deadline)
            print(
                f"\nfirmware boot: login prompt at {login:.0f} s, cloud-init done at {done:.0f} s"
            )
    assert "Cloud-init v." in console.output.decode(errors="replace")


def test_boots_its_kernel_directly_and_grows_into_a_larger_disk(
    debian_image: Image, tmp_path: Path
) -> None:
    assert debian_image.kernel is not None and debian_image.initrd is not None
    overlay = tmp_path / "big.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", str(debian_image.disk),
         str(overlay), "6G"],
        check=True, capture_output=True,
    )  # fmt: skip
    argv = [
        "-kernel", str(debian_image.kernel), "-initrd", str(debian_image.initrd),
        "-append", str(debian_image.info.cmdline),
        "-drive", f"file={overlay},format=qcow2,if=virtio",
        "-nic", "user,model=virtio-net-pci",
    ]  # fmt: skip
    with qemu(argv) as console:
        deadline = time.monotonic() + BOOT_TIMEOUT
        console.expect("GROWROOT: CHANGED: partition=1", deadline)
        console.expect("EXT4-fs (vda1): resized filesystem", deadline)
        login = console.expect("login:", deadline)
        done = console.expect(" finished at ", deadline)
        print(
            f"\ndirect kernel boot: login prompt at {login:.0f} s, cloud-init done at {done:.0f} s"
        )
    text = console.output.decode(errors="replace")
    assert "GNU GRUB" not in text  # no firmware boot loader on this path
    # The file system fills the 6 GiB disk (but for the first MiB and growpart's few
    # sectors at the end), in 4 KiB blocks; it was 2 GiB.
    match = re.search(r"resized filesystem to (\d+)", text)
    assert match is not None
    assert (6 * 1024 - 2) * 256 < int(match.group(1)) <= (6 * 1024 - 1) * 256
