"""Cost of one port-I/O exit through qumran-vmm, end to end (KVM_RUN return, decode,
dispatch on the port bus, re-entry), with a tiny guest that does N OUTs to an unclaimed
port and powers off. Run on any /dev/kvm (``--force-kvm`` is passed), e.g. inside the KVM
test host:

    python -m tests.kvmhost run --cwd "$PWD" -- "$PWD/.venv/bin/python" bench/vmm_exits.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "kvm"))
import tinykernel

QUMRAN_VMM = str(Path(sys.executable).with_name("qumran-vmm"))


def run(kernel: Path) -> float:
    start = time.perf_counter()
    subprocess.run([QUMRAN_VMM, "--name", "exits", "--kernel", str(kernel), "--memory", "64M",
                    "--force-kvm", "--console", "none"], check=True)  # fmt: skip
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qexits-"))
    empty, loop = work / "empty.bz", work / "loop.bz"
    empty.write_bytes(tinykernel.port_loop(1))
    loop.write_bytes(tinykernel.port_loop(args.count))
    run(empty)  # warm caches
    base = min(run(empty) for _ in range(args.runs))
    full = min(run(loop) for _ in range(args.runs))
    per_exit_us = (full - base) / args.count * 1e6
    print(f"{args.count} port-I/O exits: {full - base:.2f} s -> {per_exit_us:.1f} us per exit "
          f"(process start to exit without the loop: {base:.2f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
