"""qumran-vmm against QEMU (-M microvm and -M q35, -accel kvm): exec-to-READY time, where the
time goes, and memory overhead; same kernel, initrd, command line, memory and vCPUs. Needs a
real KVM: run it inside the KVM test host:

    python -m tests.kvmhost run --timeout 1500 --cwd "$PWD" -- \\
        "$PWD/.venv/bin/python" bench/vmm_boot.py [--runs 5] [--vcpus 1] [--memory 256]

Runs are interleaved (one boot of each contender per round, the order rotating), after one
untimed warm-up boot each, so load that drifts during the run hits every contender alike.
Time: from just before exec to the guest's READY line on the serial console (Python's
start-up is included for qumran-vmm). Phases, from the guest's own clock read after READY
(``/proc/uptime`` and dmesg's ``Run /init`` timestamp; the command line gets
``printk.time=1``): exec -> kernel (the VMM's start-up, loading, the kernel decompressing
itself), kernel -> /init, /init -> READY.
Memory overhead: the process's resident set minus the resident part of the guest-RAM
mapping (the anonymous mapping sized like the guest: what the guest touched), both from
/proc/PID/smaps at READY + 0.5 s, computed the same way for every VMM.
Prints markdown tables; ratios are qumran-vmm / QEMU (below 1: qumran-vmm is better).
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from vslib.vmm_control import ask

from qumran.images.demo import DemoImage, build_demo

QEMU = "qemu-system-x86_64"
# QUMRAN_VMM_BIN: another qumran-vmm to measure (e.g. a copy of the tree taken before a change)
QUMRAN_VMM = os.environ.get("QUMRAN_VMM_BIN", str(Path(sys.executable).with_name("qumran-vmm")))
SETTLE = 0.5  # seconds after READY before reading memory
# The terminal echoes the command: the quotes keep the echo from containing the end marker.
PROBE = b"cat /proc/uptime; dmesg | grep -m1 'Run /init'; echo PROBE\"\"-END\n"


@dataclass
class Sample:
    ready: float
    rss_kib: int
    guest_kib: int
    kernel_at: float  # seconds from exec to the guest clock's zero
    init_at: float  # seconds from exec to "Run /init"
    exits: int | None = None

    @property
    def overhead_kib(self) -> int:
        return self.rss_kib - self.guest_kib


def find_demo() -> DemoImage:
    for d in (os.environ.get("QUMRAN_DEMO_DIR"), "/root/.cache/qumran/images/demo"):
        if d and (Path(d) / "vmlinuz").is_file():
            return build_demo(Path(d))
    return build_demo()


def contenders(demo: DemoImage, mem: int, vcpus: int, ctl: Path) -> dict[str, list[str]]:
    cmdline = demo.cmdline + " printk.time=1"
    common = ["-accel", "kvm", "-cpu", "host", "-m", f"{mem}M", "-smp", str(vcpus),
              "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
              "-kernel", str(demo.kernel), "-initrd", str(demo.initrd),
              "-append", cmdline]  # fmt: skip
    ours = [QUMRAN_VMM, "--name", "bench", "--kernel", str(demo.kernel),
            "--initrd", str(demo.initrd), "--cmdline", cmdline, "--memory", f"{mem}M",
            "--vcpus", str(vcpus), "--control", str(ctl)]  # fmt: skip
    return {
        "qumran-vmm": ours,
        "QEMU `-M microvm`": [QEMU, "-M", "microvm", *common],
        "QEMU `-M q35`": [QEMU, "-M", "q35", *common],
    }


def is_guest_ram(size_kib: int, mem_kib: int) -> bool:
    """Whether a mapping of ``size_kib`` is the one that backs guest RAM: sized like the
    guest (a VMM may add a few pages)."""
    return mem_kib <= size_kib <= mem_kib + 4096


class Mapping(NamedTuple):
    """One mapping of /proc/PID/smaps: its file's base name or its kind ([heap], [stack],
    [anon]), and its Size, Rss and Anonymous in KiB."""

    name: str
    size: int
    rss: int
    anonymous: int


def mappings(pid: int) -> list[Mapping]:
    """``pid``'s mappings, from one read of its smaps."""
    found: list[Mapping] = []
    name, fields = "", {"Size": 0, "Rss": 0, "Anonymous": 0}
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line
                if name:
                    found.append(Mapping(name, fields["Size"], fields["Rss"], fields["Anonymous"]))
                path = head[5].strip() if len(head) == 6 else ""
                name = os.path.basename(path) if path.startswith("/") else (path or "[anon]")
                fields = {"Size": 0, "Rss": 0, "Anonymous": 0}
            elif head and head[0].rstrip(":") in fields:
                fields[head[0].rstrip(":")] = int(head[1])
    if name:
        found.append(Mapping(name, fields["Size"], fields["Rss"], fields["Anonymous"]))
    return found


def guest_ram_rss(pid: int, mem_kib: int, maps: list[Mapping] | None = None) -> int:
    """Rss of the mapping that backs guest RAM: the one sized like the guest."""
    maps = mappings(pid) if maps is None else maps
    return max((m.rss for m in maps if is_guest_ram(m.size, mem_kib)), default=0)


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def exits_via_control(path: Path) -> int | None:
    try:
        return int(sum(ask(path, "stats")["exits"].values()))
    except (OSError, ValueError, KeyError):
        return None


def read_until(proc: subprocess.Popen[bytes], marker: bytes, what: str) -> bytes:
    assert proc.stdout is not None
    seen = b""
    while marker not in seen:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            raise RuntimeError(f"VMM ended before {what}: {seen[-500:]!r}")
        seen += chunk
    return seen


def guest_clock(proc: subprocess.Popen[bytes], start: float) -> tuple[float, float]:
    """(exec -> kernel, exec -> /init) in seconds, from the guest's uptime and dmesg."""
    assert proc.stdin is not None
    asked = time.perf_counter() - start
    proc.stdin.write(PROBE)
    proc.stdin.flush()
    out = read_until(proc, b"PROBE-END\r\n", "the probe's answer").decode(errors="replace")
    answered = time.perf_counter() - start
    uptime = re.search(r"^(\d+\.\d+) \d+\.\d+", out, re.M)
    init = re.search(r"\[\s*(\d+\.\d+)\] Run /init", out)
    if uptime is None or init is None:
        raise RuntimeError(f"no uptime or 'Run /init' in the guest's answer: {out[-500:]!r}")
    # The guest read its clock somewhere between our question and its answer (a few tenths
    # of a second apart here): the midpoint.
    kernel_at = (asked + answered) / 2 - float(uptime.group(1))
    return kernel_at, kernel_at + float(init.group(1))


def run_once(argv: list[str], ready: str, mem: int, ctl: Path | None) -> Sample:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    try:
        read_until(proc, ready.encode(), "READY")
        elapsed = time.perf_counter() - start
        time.sleep(SETTLE)
        rss, guest = vm_rss(proc.pid), guest_ram_rss(proc.pid, mem * 1024)
        exits = exits_via_control(ctl) if ctl is not None else None  # before the probe's
        kernel_at, init_at = guest_clock(proc, start)
        return Sample(elapsed, rss, guest, kernel_at, init_at, exits)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _med(values: list[float]) -> float:
    return statistics.median(values)


def table(results: dict[str, list[Sample]]) -> str:
    ours = results["qumran-vmm"]
    t_ours = _med([s.ready for s in ours])
    m_ours = _med([s.overhead_kib for s in ours])
    rows = ["| VMM | exec → READY, s (range) | exec → kernel | kernel → /init | /init → READY "
            "| RSS, MiB | overhead, MiB | time ratio | overhead ratio |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, samples in results.items():
        t = _med([s.ready for s in samples])
        spread = f"{min(s.ready for s in samples):.2f}-{max(s.ready for s in samples):.2f}"
        kernel = _med([s.kernel_at for s in samples])
        init = _med([s.init_at - s.kernel_at for s in samples])
        user = _med([s.ready - s.init_at for s in samples])
        rss = _med([s.rss_kib for s in samples]) / 1024
        over = _med([s.overhead_kib for s in samples])
        ratio_t = "1" if name == "qumran-vmm" else f"**{t_ours / t:.2f}**"
        ratio_m = "1" if name == "qumran-vmm" else f"**{m_ours / over:.2f}**"
        rows.append(f"| {name} | {t:.2f} ({spread}) | {kernel:.2f} | {init:.2f} | {user:.2f} | "
                    f"{rss:.1f} | {over / 1024:.1f} | {ratio_t} | {ratio_m} |")  # fmt: skip
    exits = [s.exits for s in ours if s.exits is not None]
    if exits:
        rows.append(f"\nqumran-vmm exits to READY (median): {statistics.median(exits):.0f}")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--memory", type=int, default=256, help="MiB")
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--only", action="append", help="run only this contender (repeat)")
    args = p.parse_args()
    demo = find_demo()
    # As an installed package is: qumran-vmm should not compile its modules at start-up.
    compileall.compile_dir(Path(__file__).parents[1] / "src", quiet=1)
    workdir = Path(tempfile.mkdtemp(prefix="qbench-"))
    ctl = workdir / "control.sock"
    chosen = {name: argv for name, argv in contenders(demo, args.memory, args.vcpus, ctl).items()
              if not args.only or name in args.only}  # fmt: skip
    load_before = os.getloadavg()
    for argv in chosen.values():  # warm file caches; not timed
        run_once(argv, demo.ready_line, args.memory, None)
    results: dict[str, list[Sample]] = {name: [] for name in chosen}
    names = list(chosen)
    for i in range(args.runs):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            s = run_once(chosen[name], demo.ready_line, args.memory,
                         ctl if name == "qumran-vmm" else None)  # fmt: skip
            print(f"round {i + 1} {name}: READY {s.ready:.2f} s (kernel at {s.kernel_at:.2f}, "
                  f"/init at {s.init_at:.2f}), RSS {s.rss_kib // 1024} MiB, guest "
                  f"{s.guest_kib // 1024} MiB, exits {s.exits}", file=sys.stderr)  # fmt: skip
            results[name].append(s)
    print(f"\n{args.vcpus} vCPU(s), {args.memory} MiB, demo guest ({demo.cmdline} printk.time=1), "
          f"{args.runs} interleaved runs each, inside the KVM test host; load average "
          f"{load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    if "qumran-vmm" in results:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
