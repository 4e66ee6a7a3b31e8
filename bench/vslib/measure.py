"""Timing and memory helpers shared by every stack in the comparison.

Ready detection watches a file (a serial log) with a short poll, the same way for every
stack that writes one, so the poll interval cancels out of the differences.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

POLL = 0.005  # seconds between looks at a console file
TICK = 1 / os.sysconf("SC_CLK_TCK")  # the unit of a process's start time in /proc


def now() -> float:
    """Seconds since boot: the clock /proc/PID/stat's start time is counted in."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def process_started(pid: int) -> float:
    """When ``pid`` was forked, on the :func:`now` clock (to 1/CLK_TCK, 10 ms here)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 2 :].split()[19]) * TICK


@dataclass(frozen=True)
class Timing:
    """One command measured by hyperfine (seconds)."""

    mean: float
    stddev: float
    median: float
    minimum: float
    maximum: float
    runs: int


class BenchError(Exception):
    """A measurement could not be taken; the report shows the message instead of a number."""


def hyperfine(
    commands: Mapping[str, str],
    export: Path,
    *,
    runs: int,
    warmup: int,
    env: Mapping[str, str] | None = None,
    prepare: Mapping[str, str] | None = None,
) -> dict[str, Timing]:
    """Time ``commands`` (label -> command line) in one hyperfine run, without a shell;
    ``prepare`` (label -> command line) runs untimed before each run of that command."""
    argv = ["hyperfine", "-N", "--style", "basic", "--warmup", str(warmup), "--runs", str(runs)]
    argv += ["--export-json", str(export)]
    for label, command in commands.items():
        argv += ["--command-name", label, command]
    for label in commands if prepare else ():
        argv += ["--prepare", prepare[label]]  # type: ignore[index]
    done = subprocess.run(argv, env=dict(env) if env else None, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"hyperfine failed: {(done.stderr or done.stdout).strip()[-500:]}")
    results = json.loads(export.read_text())["results"]
    return {
        r["command"]: Timing(
            mean=r["mean"],
            stddev=r["stddev"] or 0.0,
            median=r["median"],
            minimum=r["min"],
            maximum=r["max"],
            runs=len(r["times"]),
        )
        for r in results
    }


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes ``pids`` have used so far, all their threads
    (gone ones count 0)."""
    return sum(map(_cpu_ticks, (f"/proc/{pid}/stat" for pid in pids))) * TICK


def thread_cpu_seconds(pid: int, tids: list[int]) -> float:
    """The same for some threads of ``pid``, each its own: /proc/PID/task/TID/stat. (Not
    /proc/TID/stat: a thread's id opens its process there, and that stat counts every
    thread.)"""
    return sum(map(_cpu_ticks, (f"/proc/{pid}/task/{tid}/stat" for tid in tids))) * TICK


def _cpu_ticks(stat_path: str) -> int:
    try:
        with open(stat_path, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15


def wait_for_text(path: Path, text: bytes, deadline: float) -> float:
    """The time (:func:`now`) at which ``text`` was first seen in the file ``path``.

    The file may not exist yet (the hypervisor creates it). Reads only what was appended
    since the last look, keeping a tail so a match split across two reads is still found.
    """
    offset, tail = 0, b""
    while now() < deadline:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            seen = now()
            offset += len(chunk)
            window = tail + chunk
            if text in window:
                return seen
            tail = window[-len(text) :]
        time.sleep(POLL)
    raise BenchError(f"{text.decode()!r} did not appear in {path} in time")


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid} (a kernel thread or a zombie?)")


def pids_by_comm(comm: str) -> list[int]:
    """Every live process whose command name is exactly ``comm``.

    Zombies are skipped: pid 1 reaps orphans late here, so a daemon that just exited
    still shows its name for a second or two.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
        state = stat[stat.rindex(b")") + 2 :].split()[0]
        if name == comm and state not in (b"Z", b"X"):
            found.append(int(entry))
    return sorted(found)


def median(values: list[float]) -> float:
    return statistics.median(values)


def run(argv: list[str], *, env: Mapping[str, str] | None = None, timeout: float = 120) -> str:
    """Run a setup command; its stdout, or BenchError with its stderr."""
    done = subprocess.run(
        argv, env=dict(env) if env else None, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip()[-500:]
        raise BenchError(f"{' '.join(argv[:4])} ...: {message}")
    return done.stdout


def ensure_commands(packages: Mapping[str, str]) -> None:
    """Install, with apt-get, the Debian package of each command (command -> package)
    that is not on PATH; refresh the package lists once if the first try fails."""
    missing = sorted({pkg for cmd, pkg in packages.items() if shutil.which(cmd) is None})
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    try:
        run(argv, env=env, timeout=900)
    except BenchError:
        run(["apt-get", "update"], env=env, timeout=600)
        run(argv, env=env, timeout=900)
