"""qumran-vmm against QEMU (-M microvm and -M q35, -accel kvm): exec-to-READY time and
memory overhead, same kernel, initrd, memory and vCPUs. Needs a real KVM: run it inside
the KVM test host:

    python -m tests.kvmhost run --timeout 1200 --cwd "$PWD" -- \\
        "$PWD/.venv/bin/python" bench/vmm_boot.py [--runs 3] [--vcpus 1] [--memory 256]

Each contender gets one untimed warm-up run. Time: from just before exec to the guest's
READY line on the serial console (so Python's start-up is included for qumran-vmm).
Memory overhead: the process's resident set minus the resident part of the guest-RAM
mapping (what the guest touched), measured at READY.
Prints a markdown table; ratios are qumran-vmm / QEMU (below 1: qumran-vmm is better).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from qumran.images import DemoImage, build_demo

QEMU = "qemu-system-x86_64"
QUMRAN_VMM = str(Path(sys.executable).with_name("qumran-vmm"))
SETTLE = 0.5  # seconds after READY before reading memory


@dataclass
class Sample:
    ready: float
    rss_kib: int
    guest_kib: int
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
    common = ["-accel", "kvm", "-cpu", "host", "-m", f"{mem}M", "-smp", str(vcpus),
              "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
              "-kernel", str(demo.kernel), "-initrd", str(demo.initrd),
              "-append", demo.cmdline]  # fmt: skip
    return {
        "qumran-vmm": [
            QUMRAN_VMM,
            "--name",
            "bench",
            "--kernel",
            str(demo.kernel),
            "--initrd",
            str(demo.initrd),
            "--cmdline",
            demo.cmdline,
            "--memory",
            f"{mem}M",
            "--vcpus",
            str(vcpus),
            "--control",
            str(ctl),
        ],
        "qemu -M microvm": [QEMU, "-M", "microvm", *common],
        "qemu -M q35": [QEMU, "-M", "q35", *common],
    }


def guest_ram_rss(pid: int, mem_kib: int) -> int:
    """Rss of the mapping that backs guest RAM: the anonymous one sized like the guest."""
    best = 0
    size = rss = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
                if mem_kib <= size <= mem_kib + 4096:
                    best = max(best, rss)
    return best


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def exits_via_control(path: Path) -> int | None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(path))
            s.sendall(b'{"cmd":"stats"}\n')
            reply = s.makefile().readline()
        return int(sum(json.loads(reply)["exits"].values()))
    except (OSError, ValueError, KeyError):
        return None


def run_once(argv: list[str], ready: str, mem: int, ctl: Path | None) -> Sample:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    assert proc.stdout is not None
    seen = b""
    try:
        while ready.encode() not in seen:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                raise RuntimeError(f"{argv[0]} ended before READY: {seen[-500:]!r}")
            seen = (seen + chunk)[-4096:]
        elapsed = time.perf_counter() - start
        time.sleep(SETTLE)
        sample = Sample(elapsed, vm_rss(proc.pid), guest_ram_rss(proc.pid, mem * 1024))
        if ctl is not None:
            sample.exits = exits_via_control(ctl)
        return sample
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def table(results: dict[str, list[Sample]]) -> str:
    ours = results["qumran-vmm"]
    t_ours = statistics.median(s.ready for s in ours)
    m_ours = statistics.median(s.overhead_kib for s in ours)
    rows = ["| VMM | exec to READY (s, median) | RSS at READY (MiB) | overhead (MiB) | "
            "time ratio | overhead ratio |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, samples in results.items():
        t = statistics.median(s.ready for s in samples)
        rss = statistics.median(s.rss_kib for s in samples) / 1024
        over = statistics.median(s.overhead_kib for s in samples)
        spread = f"{min(s.ready for s in samples):.2f}-{max(s.ready for s in samples):.2f}"
        ratio_t = "1" if name == "qumran-vmm" else f"{t_ours / t:.2f}"
        ratio_m = "1" if name == "qumran-vmm" else f"{m_ours / over:.2f}"
        rows.append(f"| {name} | {t:.2f} ({spread}) | {rss:.1f} | {over / 1024:.1f} | "
                    f"{ratio_t} | {ratio_m} |")  # fmt: skip
    exits = [s.exits for s in ours if s.exits is not None]
    if exits:
        rows.append(f"\nqumran-vmm exits to READY (median): {statistics.median(exits):.0f}")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--memory", type=int, default=256, help="MiB")
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--only", action="append", help="run only this contender (repeat)")
    args = p.parse_args()
    demo = find_demo()
    workdir = Path(tempfile.mkdtemp(prefix="qbench-"))
    ctl = workdir / "control.sock"
    results: dict[str, list[Sample]] = {}
    for name, argv in contenders(demo, args.memory, args.vcpus, ctl).items():
        if args.only and name not in args.only:
            continue
        # One untimed run first, so every contender starts with warm file caches.
        run_once(argv, demo.ready_line, args.memory, None)
        for i in range(args.runs):
            s = run_once(argv, demo.ready_line, args.memory, ctl if name == "qumran-vmm" else None)
            print(f"{name} run {i + 1}: {s.ready:.2f} s, RSS {s.rss_kib // 1024} MiB, "
                  f"guest {s.guest_kib // 1024} MiB, exits {s.exits}", file=sys.stderr)  # fmt: skip
            results.setdefault(name, []).append(s)
    print(f"\n{args.vcpus} vCPU(s), {args.memory} MiB, demo guest ({demo.cmdline}), "
          f"{args.runs} runs each, inside the KVM test host\n")  # fmt: skip
    if "qumran-vmm" in results:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
