"""A qemu-storage-daemon exporting one image as a vhost-user-blk socket, for tests and
benchmarks (qumrand's own launch is in qumran.drivers.native.storage)."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
from pathlib import Path

QSD = shutil.which("qemu-storage-daemon")


class StorageDaemon:
    """``image`` exported on ``sock``.

    --daemonize: the parent exits once the export listens (or with the reason it cannot),
    so there is nothing to poll for; the daemon's pid comes from --pidfile."""

    def __init__(self, image: Path, sock: Path, fmt: str = "qcow2", queues: int = 1,
                 iothread: bool = False) -> None:  # fmt: skip
        self.image, self.sock, self.fmt, self.queues = image, sock, fmt, queues
        self.iothread = iothread  # serve the export from an iothread (it polls a while)
        self.pid = 0

    def start(self) -> None:
        assert QSD is not None, "qemu-storage-daemon is not installed"
        pidfile = self.sock.with_suffix(".pid")
        extra = ["--object", "iothread,id=io0"] if self.iothread else []
        done = subprocess.run(
            [QSD, "--daemonize", "--pidfile", str(pidfile), *extra,
             "--blockdev", f"driver=file,node-name=file,filename={self.image},aio=threads",
             "--blockdev", f"driver={self.fmt},node-name=disk,file=file",
             "--export", "type=vhost-user-blk,id=vub,node-name=disk,addr.type=unix,"
             f"addr.path={self.sock},writable=on,num-queues={self.queues}"
             + (",iothread=io0" if self.iothread else "")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        self.pid = int(pidfile.read_text())

    def stop(self, kill: bool = False) -> None:
        if self.pid:
            pidfd = os.pidfd_open(self.pid)
            os.kill(self.pid, signal.SIGKILL if kill else signal.SIGTERM)
            assert select.select([pidfd], [], [], 60)[0], "qemu-storage-daemon did not exit"
            os.close(pidfd)
            self.pid = 0
