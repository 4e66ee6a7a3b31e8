"""``qumran image build debian-12``: cold, warm, and a second build with nothing changed.

    PYTHONPATH=src .venv/bin/python bench/image_build.py [--hits N] [--no-write]

All three run against a cache of their own (``XDG_CACHE_HOME`` pointed at an empty
folder), so the user's images and packages are neither used nor touched:

- cold: the package cache (``$XDG_CACHE_HOME/qumran/debian-archives/bookworm``, where the
  build keeps the ``.deb`` files mmdebstrap downloaded) empty, no image;
- warm: the packages of the cold build cached, the image removed (``qumran image rm``);
- cached: the image there and its recipe unchanged (must be a cache hit, under a second),
  N times.

Wall time from the exec to the exit; CPU = user + system time of the build and every
process it waited for (``wait4``'s rusage: mmdebstrap, apt, dpkg, mke2fs, qemu-img ...).
The phases are the build's own progress lines ("[2/5] making the root file system"),
timestamped as they arrive. The section goes into BENCHMARKS.md between its image_build
markers. Benchmarks measure; they never assert. The private cache is removed at the end,
on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from vslib.create_report import write_between
from vslib.measure import median, now

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- image_build:begin -->"
END = "<!-- image_build:end -->"
IMAGE = "debian-12"
TO = "\u2013"
PHASE_LINE = re.compile(r"^\[(\d+)/(\d+)\] ([^:]+)$")  # a phase starts; "...: 25%" does not


@dataclass
class Build:
    kind: str
    wall: float
    cpu: float
    returncode: int
    phases: list[tuple[str, float]] = field(default_factory=list)  # (name, seconds in)
    tail: str = ""


def phase_of(line: str) -> str | None:
    """The phase a progress line of `qumran image build` starts, if it starts one."""
    match = PHASE_LINE.match(line.strip())
    return match.group(3) if match else None


def build(kind: str, env: dict[str, str], cli: str) -> Build:
    t0 = now()
    proc = subprocess.Popen(
        [cli, "image", "build", IMAGE], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    phases: list[tuple[str, float]] = []
    lines: list[str] = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip("\n")
        lines.append(line)
        name = phase_of(line)
        if name is not None:
            phases.append((name, now() - t0))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = now() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Build(
        kind, wall, usage.ru_utime + usage.ru_stime, proc.returncode, phases,
        " | ".join(lines[-3:])[-300:],
    )  # fmt: skip


def log(message: str) -> None:
    print(f"[image_build {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hits", type=int, default=5, help="cached builds timed (default 5)")
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    cli = str(Path(sys.executable).parent / "qumran")
    root = Path(tempfile.mkdtemp(prefix="qib", dir="/var/tmp"))  # on disk, not tmpfs
    env = {**os.environ, "XDG_CACHE_HOME": str(root / "cache")}
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "load": _load()}
    builds: list[Build] = []
    archives = root / "cache" / "qumran" / "debian-archives" / "bookworm"
    packages = (0, 0)
    try:
        log("cold build (empty package cache); minutes")
        builds.append(build("cold", env, cli))
        packages = _archives(archives)
        if builds[-1].returncode == 0:
            subprocess.run([cli, "image", "rm", IMAGE], env=env, check=True, capture_output=True)
            log("warm build (packages cached, image removed)")
            builds.append(build("warm", env, cli))
        for i in range(args.hits):
            log(f"cached build {i + 1}/{args.hits}")
            builds.append(build("cached", env, cli))
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    meta["load"] += f" → {_load()} (before → after)"
    section = render(builds, meta, packages)
    print(section)
    if not args.no_write:
        write_between(REPO / "BENCHMARKS.md", BEGIN, END, section)
        log("wrote BENCHMARKS.md")
    return 0


def _archives(folder: Path) -> tuple[int, int]:
    """How many .deb files the package cache holds, and their bytes."""
    debs = list(folder.glob("*.deb")) if folder.is_dir() else []
    return len(debs), sum(d.stat().st_size for d in debs)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s ({value / 60:.1f} min)"


def render(builds: list[Build], meta: dict[str, str], packages: tuple[int, int]) -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    lines = [
        "## `qumran image build debian-12`: cold, warm, cached",
        "",
        f"`PYTHONPATH=src .venv/bin/python bench/image_build.py` — {meta['date']}. Machine: "
        f"{os.cpu_count()} CPUs, {cpu}, Linux {platform.release()}; load average "
        f"{meta['load']}. Packages from http://deb.debian.org over this machine's network.",
        "",
        "| build | wall time | CPU (build + children) | CPU / wall | exit | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("cold", "warm"):
        for b in (b for b in builds if b.kind == kind):
            lines.append(
                f"| {kind} | {_seconds(b.wall)} | {_seconds(b.cpu)} | {b.cpu / b.wall:.2f} "
                f"| {b.returncode} | | |"
            )
    hits = [b for b in builds if b.kind == "cached"]
    if hits:
        walls = [b.wall for b in hits]
        cpus = [b.cpu for b in hits]
        ok = all(b.returncode == 0 for b in hits) and median(walls) < 1.0
        lines.append(
            f"| cached (recipe unchanged), median (range), n={len(hits)} "
            f"| {median(walls):.3f} s ({min(walls):.3f}{TO}{max(walls):.3f}) "
            f"| {median(cpus):.3f} s | {median(cpus) / median(walls):.2f} "
            f"| {max(b.returncode for b in hits)} | < 1 s | {'✓' if ok else '✗'} |"
        )
    cold = next((b for b in builds if b.kind == "cold"), None)
    warm = next((b for b in builds if b.kind == "warm"), None)
    if cold and warm:
        lines += ["", f"Warm/cold wall time: {warm.wall / cold.wall:.2f}."]
    lines += ["", "Phases (seconds from the exec when each began, the build's own lines):", ""]
    for b in (x for x in (cold, warm) if x is not None):
        parts = [f"{name} {at:.0f}" for name, at in b.phases] + [f"done {b.wall:.0f}"]
        lines.append(f"- {b.kind}: " + "; ".join(parts))
        if b.returncode != 0:
            lines.append(f"  (failed: {b.tail})")
    count, size = packages
    lines += [
        "",
        "How each number is taken:",
        "",
        "- Every build runs `qumran image build debian-12` with XDG_CACHE_HOME pointed at a "
        "folder of the benchmark's, so the user's image and package caches are not used or "
        "touched. cold: that folder empty, so mmdebstrap downloads every package; the build "
        f"keeps them in `$XDG_CACHE_HOME/qumran/debian-archives/bookworm` ({count} .deb "
        f"files, {size / 2**20:.0f} MiB after the cold build). warm: the same cache, the image "
        "removed with `qumran image rm`; mmdebstrap still fetches the package lists (apt-get "
        "update) and installs everything, but downloads no package. cached: the image there "
        "with its recipe's digest unchanged.",
        "- Wall time: exec to exit (CLOCK_BOOTTIME). CPU: the build's and its waited-for "
        "children's user + system time (wait4), so CPU / wall above 1 means both CPUs busy.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
