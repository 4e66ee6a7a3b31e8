"""Child processes with their CPU time: ``os.wait4`` gives each one's own rusage."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from vslib.measure import BenchError


@dataclass(frozen=True)
class Finished:
    returncode: int
    cpu: float  # user + system seconds of the process (and children it waited for)
    output: str  # stdout and stderr together


def reap(proc: subprocess.Popen[bytes], timeout: float) -> Finished:
    """Wait for ``proc`` (started with stdout=PIPE), reading its output so it never blocks."""
    chunks: list[bytes] = []

    def read() -> None:
        if proc.stdout is not None:
            chunks.append(proc.stdout.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            what = " ".join(map(str, proc.args[:3]))  # type: ignore[index]
            raise BenchError(f"{what} ... did not finish in {timeout:.0f} s")
        time.sleep(0.005)
    reader.join(timeout=5)
    output = b"".join(chunks).decode(errors="replace")
    return Finished(proc.returncode, usage.ru_utime + usage.ru_stime, output)


def start(argv: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
    )  # fmt: skip


def timed(argv: list[str], env: Mapping[str, str] | None = None, timeout: float = 300) -> float:
    """Run ``argv`` to completion; the CPU seconds it used (BenchError if it failed)."""
    done = reap(start(argv, env), timeout)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:3])} ... failed: {done.output.strip()[-600:]}")
    return done.cpu


def until_success(
    argv: list[str], deadline: float, pause: float, env: Mapping[str, str] | None = None
) -> tuple[int, float]:
    """Run ``argv`` until it succeeds; how many tries it took and their CPU seconds."""
    from vslib.measure import now

    tries, cpu, last = 0, 0.0, ""
    while now() < deadline:
        tries += 1
        done = reap(start(argv, env), 60)
        cpu += done.cpu
        if done.returncode == 0:
            return tries, cpu
        last = done.output.strip()[-300:]
        time.sleep(pause)
    raise BenchError(f"{' '.join(argv[:2])} ... did not succeed in time ({tries} tries): {last}")


def helpers_of(vmm: int, markers: list[bytes]) -> dict[int, str]:
    """A VM's other processes, pid -> program name: the VMM's children, and every process
    whose command line holds one of ``markers`` somewhere in an argument (what names the
    VM in it: qemu-storage-daemon's socket folder, passt's forward; passt forks into the
    background, so it is nobody's child by then)."""
    found: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in (vmm, os.getpid()):
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry.name}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == vmm or any(m in arg for arg in argv for m in markers):
            found[int(entry.name)] = os.path.basename(argv[0].decode(errors="replace"))
    return found
