"""virtio-blk throughput: qumran-vmm against QEMU -M q35 -accel kvm with virtio-blk-pci,
same kernel, initrd, memory and raw image. Needs a real KVM: run it inside the test host:

    python -m tests.kvmhost run --timeout 1500 --cwd "$PWD" -- \\
        "$PWD/.venv/bin/python" bench/vmm_virtio.py [--mib 128] [--runs 2]

In the guest: sequential ``dd`` with 1 MiB blocks, a read of /dev/vda after dropping the
guest's page cache, and a write ending with fsync, each larger than the guest's RAM and
timed in the guest by busybox ``time`` (the serial console's latency under a nested KVM is
too large and too variable to time from the host). Prints a markdown table; ratio =
qumran-vmm / QEMU (above 1: qumran-vmm is faster).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from qumran.images import DemoImage, build_demo

QEMU = "qemu-system-x86_64"
QUMRAN_VMM = str(Path(sys.executable).with_name("qumran-vmm"))
MEMORY = "256M"


def find_demo() -> DemoImage:
    for d in (os.environ.get("QUMRAN_DEMO_DIR"), "/root/.cache/qumran/images/demo"):
        if d and (Path(d) / "vmlinuz").is_file():
            return build_demo(Path(d))
    return build_demo()


class Guest:
    """A VM process with its serial console on stdin/stdout."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        self.out = bytearray()
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        while data := os.read(self.proc.stdout.fileno(), 65536):
            with self.cond:
                self.out += data
                self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float, since: int = 0) -> None:
        regex = re.compile(pattern.encode(), re.DOTALL)
        deadline = time.monotonic() + timeout
        with self.cond:
            while not regex.search(self.out, since):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = self.out[-1500:].decode(errors="replace")
                    raise SystemExit(f"{pattern!r} not seen; console:\n{tail}")
                self.cond.wait(min(left, 0.5))

    def run(self, cmd: str, timeout: float = 600) -> str:
        """Run ``cmd`` in the guest shell; its output."""
        token = f"Q{time.monotonic_ns() % 10**9}"
        with self.cond:
            since = len(self.out)
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"echo {token}-B; {cmd}; echo {token}-E\n".encode())
        self.proc.stdin.flush()
        self.wait_for(rf"{token}-B\r?\n(.*?){token}-E", timeout, since)
        with self.cond:
            text = self.out[since:].decode(errors="replace")
        found = re.search(rf"{token}-B\r?\n(.*?){token}-E", text, re.DOTALL)
        return found.group(1) if found else ""

    def timed(self, cmd: str) -> float:
        """Seconds ``cmd`` took in the guest (busybox time: "real 0m 1.23s")."""
        out = self.run(f"time sh -c '{cmd} 2>/dev/null' 2>&1")
        m = re.search(r"real\s+(\d+)m\s*([\d.]+)s", out)
        if m is None:
            raise SystemExit(f"no timing in {out!r}")
        return int(m.group(1)) * 60 + float(m.group(2))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def contenders(demo: DemoImage, image: Path, workdir: Path) -> dict[str, list[str]]:
    return {
        "qumran-vmm": [QUMRAN_VMM, "--name", "bench", "--kernel", str(demo.kernel),
                       "--initrd", str(demo.initrd), "--cmdline", demo.cmdline,
                       "--memory", MEMORY, "--disk", str(image)],
        "qemu q35 virtio-blk-pci": [QEMU, "-M", "q35", "-accel", "kvm", "-cpu", "host",
                                    "-m", MEMORY, "-nodefaults", "-no-user-config",
                                    "-display", "none", "-serial", "stdio",
                                    "-kernel", str(demo.kernel), "-initrd", str(demo.initrd),
                                    "-append", demo.cmdline,
                                    "-drive", f"file={image},if=none,id=d0,format=raw",
                                    "-device", "virtio-blk-pci,drive=d0"],
    }  # fmt: skip


def measure(argv: list[str], demo: DemoImage, mib: int) -> tuple[float, float]:
    guest = Guest(argv)
    try:
        guest.wait_for(demo.ready_line, 180)
        guest.run("sync; echo 3 > /proc/sys/vm/drop_caches")
        write = guest.timed(f"dd if=/dev/zero of=/dev/vda bs=1M count={mib} conv=fsync")
        guest.run("sync; echo 3 > /proc/sys/vm/drop_caches")
        read = guest.timed(f"dd if=/dev/vda of=/dev/null bs=1M count={mib}")
        return mib / read, mib / write
    finally:
        guest.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=512)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    demo = find_demo()
    results: dict[str, tuple[list[float], list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="qbench-") as tmp:
        image = Path(tmp) / "disk.img"
        with open(image, "wb") as f:
            f.truncate((args.mib + 16) << 20)
        for name, argv in contenders(demo, image, Path(tmp)).items():
            reads, writes = results.setdefault(name, ([], []))
            for _ in range(args.runs):
                r, w = measure(argv, demo, args.mib)
                reads.append(r)
                writes.append(w)
                print(f"{name}: read {r:.1f} MB/s, write {w:.1f} MB/s", file=sys.stderr)
    ours, qemu = results["qumran-vmm"], results["qemu q35 virtio-blk-pci"]
    print(
        f"| dd {args.mib} MiB, 1 MiB blocks (median of {args.runs}) | qumran-vmm | QEMU | ratio |"
    )
    print("|---|---|---|---|")
    for label, i in (("sequential read MB/s", 0), ("sequential write + fsync MB/s", 1)):
        a, b = statistics.median(ours[i]), statistics.median(qemu[i])
        print(f"| {label} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
