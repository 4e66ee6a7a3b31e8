"""Steps every driver's launch shares: clear stale sockets, wait for the monitor socket
while watching the process, and quote the process's own output when it fails."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Iterable
from pathlib import Path

from qumran.drivers.process import ProcState, Spawned

POLL_INTERVAL = 0.01  # seconds between connection attempts
LOG_TAIL = 2000  # characters of a process's output quoted in an error


class ProcessExited(Exception):
    """The process exited before its monitor socket accepted a connection."""


def remove_stale(paths: Iterable[Path]) -> None:
    """Sockets and pid files of an earlier run would fool a readiness check."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def wait_for_socket(process: Spawned, path: Path) -> socket.socket:
    """A connected socket to ``path`` as soon as something listens there.

    Raise :class:`ProcessExited` if ``process`` ends first. The caller bounds the wait.
    """
    loop = asyncio.get_running_loop()
    while True:
        if process.reap() is not None or process.state() is ProcState.GONE:
            raise ProcessExited()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
        except BaseException:
            sock.close()
            raise
        await asyncio.sleep(POLL_INTERVAL)


async def kill(process: Spawned) -> None:
    """SIGKILL ``process`` and, if we are its parent, reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    if process.popen is not None:
        await asyncio.to_thread(process.popen.wait)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def log_tail(path: Path, offset: int) -> str:
    """What was appended to ``path`` since ``offset``, as one line of readable text."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())[-LOG_TAIL:]


def cmdline_mentions(pid: int, text: str) -> bool:
    """Whether an argument of ``pid`` contains ``text`` (a guard against pid reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(text in arg for arg in args)
