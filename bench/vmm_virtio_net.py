"""The bench's network: a netns holding the VMM's TAP, an iperf3 server on the TAP's side.

The test host's kernel has tun as a module and the test host has no kmod: tun.ko from the
cached Debian kernel package is loaded with finit_module(2), as tests/kvm does.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

HOST_IP = "10.0.2.2"
GUEST_IP = "10.0.2.15"
TAP = "qbtap0"
MAC = "52:54:00:12:34:56"
SYS_FINIT_MODULE = 313  # x86-64


def load_tun() -> bool:
    """Make /dev/net/tun exist; False if it cannot be."""
    if os.path.exists("/dev/net/tun"):
        return True
    release = os.uname().release
    libc = ctypes.CDLL(None, use_errno=True)
    for home in {Path.home(), Path("/root")}:
        for ko in (home / ".cache/qumran/debs").glob(
            f"linux-image-*/lib/modules/{release}/**/tun.ko"
        ):
            fd = os.open(ko, os.O_RDONLY)
            libc.syscall(SYS_FINIT_MODULE, fd, b"", 0)
            os.close(fd)
            break
    return os.path.exists("/dev/net/tun")


class Netns:
    """A network namespace for one bench run; ``close`` deletes it with its TAPs."""

    def __init__(self) -> None:
        self.name = f"qbench{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.server: subprocess.Popen[bytes] | None = None

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run in the namespace (``ip netns exec`` execs, so the PID stays)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def serve(self) -> None:
        """Give the VMM's TAP the host address and start a one-shot iperf3 server on it."""
        ip = ["ip", "-n", self.name]
        subprocess.run([*ip, "addr", "add", f"{HOST_IP}/24", "dev", TAP], check=True)
        subprocess.run([*ip, "link", "set", TAP, "up"], check=True)
        self.stop_server()
        self.server = subprocess.Popen(
            self.wrap(["iperf3", "-s", "-1", "-B", HOST_IP]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait()
            self.server = None

    def close(self) -> None:
        self.stop_server()
        subprocess.run(["ip", "netns", "del", self.name], check=False)
