"""qcow2 disks: qumran-vmm + qemu-storage-daemon (vhost-user-blk) against QEMU -M q35
-accel kvm with virtio-blk-pci, on the same qcow2 overlay; and, for raw images, qumran-vmm's
own in-process virtio-blk against the same storage daemon path. Needs a real KVM and, on
the host, ``apt-get install -y fio iperf3 qemu-utils``; run it inside the test host:

    python -m tests.kvmhost run --timeout 2400 --cwd "$PWD" -- \\
        "$PWD/.venv/bin/python" bench/vmm_blk.py [--runs 2] [--seconds 10]

The image: a 256 MiB raw file of non-zero bytes converted to a qcow2 base, and for every
run a fresh qcow2 overlay on it, so that reads go through the backing chain and writes
allocate clusters in the overlay, as for a VM created from a cloud image. Both sides use
the host's page cache (QEMU's default cache=writeback; the storage daemon's cache.direct
off), thread-pool AIO, one queue. In the guest (fio from the bench initramfs,
vmm_virtio_tools.py, O_DIRECT on /dev/vda): 4 KiB random reads at queue depth 1 (psync)
and 16 (libaio), sequential 1 MiB writes ending with an fsync, and 4 KiB writes each
followed by an fsync (the flush path, what a database's commits cost).
Prints markdown tables; ratio = qumran-vmm / QEMU (above 1: qumran-vmm is faster).
Measures; never asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from vmm_virtio import QEMU, QUMRAN_VMM, Guest, GuestStuck, find_demo
from vmm_virtio_tools import LIBRARY_PATH, bench_initrd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qumran.images.demo import DemoImage
from storage_daemon import StorageDaemon

MEMORY = "256M"
IMAGE_MIB = 256
Result = dict[str, float]
FIO = (f"LD_LIBRARY_PATH={LIBRARY_PATH} fio --name=b --filename=/dev/vda --direct=1 "
       "--minimal")  # fmt: skip
# label -> (fio options, terse v3 field, scale): field 8 read IOPS, 7 read KiB/s,
# 49 write IOPS, 48 write KiB/s (1-based, as fio's documentation counts).
JOBS = {
    "randread 4k QD1 IOPS": ("--rw=randread --bs=4k --ioengine=psync --time_based", 8, 1.0),
    "randread 4k QD16 IOPS": (
        "--rw=randread --bs=4k --ioengine=libaio --iodepth=16 --time_based", 8, 1.0),
    "seqwrite 1M +fsync MiB/s": (
        "--rw=write --bs=1M --ioengine=psync --size=128M --end_fsync=1", 48, 1 / 1024),
    "write 4k fsync=1 IOPS": (
        "--rw=write --bs=4k --ioengine=psync --fsync=1 --time_based", 49, 1.0),
}  # fmt: skip


def fio(guest: Guest, options: str, seconds: int, field: int) -> float | None:
    out = guest.run(f"{FIO} {options} --runtime={seconds} 2>&1 | tail -1", seconds + 300)
    fields = out.strip().split(";")
    if len(fields) > field and fields[field - 1].replace(".", "").isdigit():
        return float(fields[field - 1])
    print(f"fio {options}: {out[-400:]!r}", file=sys.stderr)
    return None


def measure(argv: list[str], demo: DemoImage, seconds: int) -> Result:
    guest = Guest(argv)
    res: Result = {}
    try:
        guest.wait_for(demo.ready_line, 240)
        for label, (options, field, scale) in JOBS.items():
            value = fio(guest, options, seconds, field)
            if value is not None:
                res[label] = value * scale
        return res
    except GuestStuck as exc:
        print(f"run cut short: {exc}", file=sys.stderr)
        return res
    finally:
        guest.close()


def vmm_argv(demo: DemoImage, initrd: Path, disk: str) -> list[str]:
    return [QUMRAN_VMM, "--name", "bench", "--kernel", str(demo.kernel), "--initrd",
            str(initrd), "--cmdline", demo.cmdline, "--memory", MEMORY, "--disk", disk]  # fmt: skip


def qemu_argv(demo: DemoImage, initrd: Path, image: Path, fmt: str) -> list[str]:
    return [QEMU, "-M", "q35", "-accel", "kvm", "-cpu", "host", "-m", MEMORY, "-nodefaults",
            "-no-user-config", "-display", "none", "-serial", "stdio",
            "-kernel", str(demo.kernel), "-initrd", str(initrd), "-append", demo.cmdline,
            "-drive", f"file={image},if=none,id=d0,format={fmt},cache=writeback,aio=threads",
            "-device", "virtio-blk-pci,drive=d0"]  # fmt: skip


def make_base(tmp: Path) -> tuple[Path, Path]:
    """A raw image of non-zero bytes and its qcow2 copy, the base of every overlay."""
    raw = tmp / "base.raw"
    block = (bytes(range(256)) * 4096)[: 1 << 20]
    with open(raw, "wb") as f:
        for _ in range(IMAGE_MIB):
            f.write(block)
    base = tmp / "base.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(base)], check=True)
    return raw, base


def overlay(tmp: Path, base: Path) -> Path:
    top = tmp / "top.qcow2"
    top.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
                    str(top)], check=True)  # fmt: skip
    return top


def raw_copy(tmp: Path, raw: Path) -> Path:
    """A fresh copy of the raw image, written out (not sparse), for each raw run."""
    copy = tmp / "copy.raw"
    subprocess.run(["cp", "--sparse=never", str(raw), str(copy)], check=True)
    return copy


def run_one(name: str, tmp: Path, demo: DemoImage, initrd: Path, raw: Path, base: Path,
            seconds: int) -> Result:  # fmt: skip
    if name == "QEMU qcow2":
        return measure(qemu_argv(demo, initrd, overlay(tmp, base), "qcow2"), demo, seconds)
    if name == "qumran-vmm raw in-process":
        return measure(vmm_argv(demo, initrd, str(raw_copy(tmp, raw))), demo, seconds)
    if name == "QEMU raw":
        return measure(qemu_argv(demo, initrd, raw_copy(tmp, raw), "raw"), demo, seconds)
    image, fmt = (overlay(tmp, base), "qcow2") if "qcow2" in name else (raw_copy(tmp, raw), "raw")
    daemon = StorageDaemon(image, tmp / "vub.sock", fmt, iothread="iothread" in name)
    daemon.start()
    try:
        return measure(vmm_argv(demo, initrd, f"vhost-user={daemon.sock}"), demo, seconds)
    finally:
        daemon.stop()


CONTENDERS = ("qumran-vmm+qsd qcow2", "QEMU qcow2", "qumran-vmm+qsd iothread qcow2",
              "qumran-vmm raw in-process", "qumran-vmm+qsd raw", "QEMU raw")  # fmt: skip


def _cell(values: list[float], runs: int) -> str:
    text = f"{statistics.median(values):.0f}"
    text += f" ({min(values):.0f}-{max(values):.0f})" if len(values) > 1 else ""
    return text + (f" [{len(values)} of {runs}]" if len(values) < runs else "")


def table(results: dict[str, list[Result]], names: tuple[str, ...], runs: int) -> str:
    head = f"| median of {runs} | " + " | ".join(names) + " | ratio |"
    lines = [head, "|---" * (len(names) + 2) + "|"]
    for key in JOBS:
        cols = [[r[key] for r in results.get(n, []) if key in r] for n in names]
        cells = [_cell(c, runs) if c else "-" for c in cols]
        ratio = (f"{statistics.median(cols[0]) / statistics.median(cols[1]):.2f}"
                 if cols[0] and cols[1] else "-")  # fmt: skip
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--only", default=",".join(CONTENDERS))
    args = p.parse_args()
    names = [n for n in CONTENDERS if n in args.only.split(",")]
    demo = find_demo()
    initrd = bench_initrd(demo)
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    results: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="qbench-blk-") as t:
        tmp = Path(t)
        raw, base = make_base(tmp)
        for _ in range(args.runs):  # interleaved, so drifting load hits all alike
            for name in names:
                res = run_one(name, tmp, demo, initrd, raw, base, args.seconds)
                results.setdefault(name, []).append(res)
                shown = ", ".join(f"{k} {v:.0f}" for k, v in res.items())
                print(f"{name}: {shown}", file=sys.stderr, flush=True)
    print("qcow2 overlay (ratio: qumran-vmm+qsd / QEMU)\n")
    print(table(results, ("qumran-vmm+qsd qcow2", "QEMU qcow2"), args.runs))
    print("\nqcow2 overlay, the export in an iothread (ratio: qumran-vmm+qsd / QEMU)\n")
    print(table(results, ("qumran-vmm+qsd iothread qcow2", "QEMU qcow2"), args.runs))
    print("\nraw image (ratio: in-process / qumran-vmm+qsd)\n")
    print(table(results, ("qumran-vmm raw in-process", "qumran-vmm+qsd raw", "QEMU raw"),
                args.runs))  # fmt: skip
    print(f"\nload average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
