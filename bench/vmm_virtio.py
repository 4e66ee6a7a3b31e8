"""virtio-blk and virtio-net: qumran-vmm against QEMU -M q35 -accel kvm with virtio-blk-pci
and virtio-net-pci on a TAP, same kernel, initrd, memory, raw image and network. Needs a
real KVM and, on the host, ``apt-get install -y fio iperf3``; run it inside the test host:

    python -m tests.kvmhost run --timeout 1500 --cwd "$PWD" -- \\
        "$PWD/.venv/bin/python" bench/vmm_virtio.py [--mib 128] [--runs 2] [--only net] \\
        [--vhost]

In the guest: sequential ``dd`` with 1 MiB blocks, a read of /dev/vda after dropping the
guest's page cache, and a write ending with fsync, each larger than the guest's RAM and
timed in the guest by busybox ``time`` (the serial console's latency under a nested KVM is
too large and too variable to time from the host). Around each dd the VMM process's
CPU time (utime + stime from /proc/PID/stat, all threads, so the vCPU thread's time in the
guest too; guest_time is reported apart) gives CPU seconds per GiB moved.
Then 4 KiB random reads with ``fio`` (psync, O_DIRECT, queue depth 1; and libaio at queue
depth 16) on /dev/vda for a fixed time, and ``iperf3`` from the guest over virtio-net to a
server on the host side of the TAP, in a network namespace. fio and iperf3 are the host's
Debian binaries, carried into the guest by an extra initramfs layer (vmm_virtio_tools.py).
Prints markdown tables; ratio = qumran-vmm / QEMU (for throughput, above 1: qumran-vmm is
faster; for CPU per GiB, above 1: qumran-vmm spends more). For qumran-vmm alone, a second
table profiles the disk's device thread per part: guest requests per kick, interrupts per
request, and the CPU time of the device threads (the ``virtio-io`` loop and the disk's
helpers) per request (from the control
socket's device counters and /proc/PID/task). With ``--vhost``, two more contenders run
the network part only, both with vhost-net (``--net ...,vhost=on`` and QEMU's
``-netdev tap,...,vhost=on``), and a second table compares them; the first table stays
userspace virtio-net against QEMU's vhost=off. Measures; never asserts.
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

from vmm_virtio_net import GUEST_IP, HOST_IP, MAC, TAP, Netns, load_tun
from vmm_virtio_tools import LIBRARY_PATH, bench_initrd
from vslib.vmm_control import ask

from qumran.images.demo import DemoImage, build_demo

QEMU = "qemu-system-x86_64"
QUMRAN_VMM = str(Path(sys.executable).with_name("qumran-vmm"))
MEMORY = "256M"


def find_demo() -> DemoImage:
    for d in (os.environ.get("QUMRAN_DEMO_DIR"), "/root/.cache/qumran/images/demo"):
        if d and (Path(d) / "vmlinuz").is_file():
            return build_demo(Path(d))
    return build_demo()


class GuestStuck(Exception):
    """The guest did not answer in time (or its VMM died)."""


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
                    raise GuestStuck(f"{pattern!r} not seen; console:\n{tail}")
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


VHOST = " vhost=on"  # suffix of the contenders with vhost-net


def contenders(demo: DemoImage, initrd: Path, image: Path, vhost: bool = False
               ) -> dict[str, list[str]]:  # fmt: skip
    """qumran-vmm and QEMU, then with ``vhost`` the same two with vhost-net on."""
    plain = _contenders(demo, initrd, image)
    if not vhost:
        return plain
    on = {"qumran-vmm": f"tap={TAP},mac={MAC},vhost=on", "QEMU": f"tap,id=n0,ifname={TAP},"
          "script=no,downscript=no,vhost=on"}  # fmt: skip
    with_vhost = {}
    for name, argv in plain.items():
        i = argv.index("--net" if name == "qumran-vmm" else "-netdev") + 1
        with_vhost[name + VHOST] = [*argv[:i], on[name], *argv[i + 1 :]]
    return plain | with_vhost


def _contenders(demo: DemoImage, initrd: Path, image: Path) -> dict[str, list[str]]:
    return {
        "qumran-vmm": [QUMRAN_VMM, "--name", "bench", "--control", str(CONTROL),
                       "--kernel", str(demo.kernel),
                       "--initrd", str(initrd), "--cmdline", demo.cmdline,
                       "--memory", MEMORY, "--disk", str(image),
                       "--net", f"tap={TAP},mac={MAC}"],
        "QEMU": [QEMU, "-M", "q35", "-accel", "kvm", "-cpu", "host",
                 "-m", MEMORY, "-nodefaults", "-no-user-config",
                 "-display", "none", "-serial", "stdio",
                 "-kernel", str(demo.kernel), "-initrd", str(initrd),
                 "-append", demo.cmdline,
                 "-drive", f"file={image},if=none,id=d0,format=raw",
                 "-device", "virtio-blk-pci,drive=d0",
                 "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
                 "-device", f"virtio-net-pci,netdev=n0,mac={MAC}"],
    }  # fmt: skip


TICK = os.sysconf("SC_CLK_TCK")
CONTROL = Path(tempfile.gettempdir()) / "qbench-vmm.ctl"


class DiskProbe:
    """qumran-vmm's disk and vCPU counters (control socket) and its threads' CPU time."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def sample(self) -> dict[str, float] | None:
        try:
            status, stats = ask(CONTROL, "status"), ask(CONTROL, "stats")
        except OSError:
            return None
        disk = next(d for d in status["devices"] if d["type"] == "disk")
        sample = {k: float(v) for k, v in disk.items() if isinstance(v, int | float)}
        sample["exits"] = float(sum(stats.get("exits", {}).values()))
        sample["device cpu"], sample["vcpu non-guest cpu"] = self._thread_cpu()
        return sample

    def _thread_cpu(self) -> tuple[float, float]:
        """CPU seconds of the device threads (the I/O loop and the disk's helpers), and
        of the other threads (the vCPUs, mostly) outside the guest."""
        device = other = 0.0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICK
            if (task / "comm").read_text().startswith("virtio-"):
                device += cpu
            else:
                other += cpu - int(fields[40]) / TICK
        return device, other

    @staticmethod
    def profile(label: str, before: object, after: object, res: Result) -> None:
        if not (isinstance(before, dict) and isinstance(after, dict)):
            return
        d = {k: after[k] - before[k] for k in after if k in before}
        requests = max(d["requests"], 1)
        res[f"{label}: requests"] = requests
        if "kicks" in d:  # the transport's counters (not in older qumran-vmm)
            res[f"{label}: requests per kick"] = requests / max(d["kicks"], 1)
            res[f"{label}: requests per wake-up"] = requests / max(d["wakeups"], 1)
            res[f"{label}: interrupts per request"] = d["interrupts"] / requests
        res[f"{label}: vCPU exits to the VMM per request"] = d["exits"] / requests
        res[f"{label}: device threads' CPU us per request"] = d["device cpu"] / requests * 1e6
        res[f"{label}: other threads' non-guest CPU us per request"] = (
            d["vcpu non-guest cpu"] / requests * 1e6
        )


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime + stime, guest_time) of ``pid`` in seconds, all threads (proc(5) fields
    14, 15 and 43; counted from after the ``(comm)`` field, which may hold spaces)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): field n is fields[n - 3].
    return (int(fields[11]) + int(fields[12])) / TICK, int(fields[40]) / TICK


Result = dict[str, float]


def disk_runs(guest: Guest, pid: int, mib: int, res: Result, probe: DiskProbe | None) -> None:
    for kind, cmd in (
        ("write", f"dd if=/dev/zero of=/dev/vda bs=1M count={mib} conv=fsync"),
        ("read", f"dd if=/dev/vda of=/dev/null bs=1M count={mib}"),
    ):
        guest.run("sync; echo 3 > /proc/sys/vm/drop_caches")
        before = probe and probe.sample()
        cpu0, g0 = cpu_times(pid)
        seconds = guest.timed(cmd)
        cpu1, g1 = cpu_times(pid)
        if probe:
            DiskProbe.profile(f"dd {kind}", before, probe.sample(), res)
        res[f"{kind} MB/s"] = mib / seconds
        res[f"{kind} cpu s/GiB"] = (cpu1 - cpu0) / (mib / 1024)
        res[f"{kind} non-guest cpu s/GiB"] = (cpu1 - cpu0 - (g1 - g0)) / (mib / 1024)


FIO = (f"LD_LIBRARY_PATH={LIBRARY_PATH} fio --name=rr --filename=/dev/vda --direct=1 "
       "--rw=randread --bs=4k --time_based --minimal")  # fmt: skip


def fio_runs(guest: Guest, seconds: int, res: Result, probe: DiskProbe | None) -> None:
    for label, engine in (("psync QD1", "--ioengine=psync"),
                          ("libaio QD16", "--ioengine=libaio --iodepth=16")):  # fmt: skip
        before = probe and probe.sample()
        out = guest.run(f"{FIO} {engine} --runtime={seconds} 2>&1 | tail -1", seconds + 120)
        if probe:
            DiskProbe.profile(f"fio {label}", before, probe.sample(), res)
        fields = out.strip().split(";")
        # --minimal (terse v3): field 8 is the read IOPS.
        if len(fields) > 8 and fields[7].isdigit():
            res[f"randread {label} IOPS"] = float(fields[7])
        else:
            print(f"fio {label}: {out[-400:]!r}", file=sys.stderr)


def iperf_run(guest: Guest, net: Netns, pid: int, seconds: int, res: Result) -> None:
    net.serve()
    guest.run(f"ip addr add {GUEST_IP}/24 dev eth0; ip link set eth0 up")
    time.sleep(1)
    cpu0, g0 = cpu_times(pid)
    out = guest.run(
        f"LD_LIBRARY_PATH={LIBRARY_PATH} iperf3 -c {HOST_IP} -t {seconds} -f m 2>&1 | tail -4",
        seconds + 60,
    )
    cpu1, g1 = cpu_times(pid)
    net.stop_server()
    m = re.search(r"([\d.]+) (\w)Bytes\s+([\d.]+) Mbits/sec.*sender", out)
    if m is None:
        print(f"iperf3: {out[-400:]!r}", file=sys.stderr)
        return
    gib = float(m.group(1)) * {"K": 2**-20, "M": 2**-10, "G": 1.0}[m.group(2)]
    res["iperf3 guest->host Mbit/s"] = float(m.group(3))
    res["iperf3 cpu s/GiB"] = (cpu1 - cpu0) / gib
    res["iperf3 non-guest cpu s/GiB"] = (cpu1 - cpu0 - (g1 - g0)) / gib


def measure(argv: list[str], demo: DemoImage, net: Netns | None, args: argparse.Namespace,
            parts: set[str]) -> Result:  # fmt: skip
    guest = Guest(net.wrap(argv) if net else argv)
    res: Result = {}
    try:
        pid = guest.proc.pid  # `ip netns exec` execs the VMM: same PID
        probe = DiskProbe(pid) if str(CONTROL) in argv else None
        guest.wait_for(demo.ready_line, 240)
        if "dd" in parts:
            disk_runs(guest, pid, args.mib, res, probe)
        if "fio" in parts:
            fio_runs(guest, args.fio_seconds, res, probe)
        if net is not None and "net" in parts:
            iperf_run(guest, net, pid, args.iperf_seconds, res)
        return res
    except GuestStuck as exc:  # keep what this run measured; the table says what is missing
        print(f"run cut short: {exc}", file=sys.stderr)
        return res
    finally:
        guest.close()


def _cell(values: list[float], runs: int, fmt: str = ".1f") -> str:
    """Median, the range when there are several runs, and how many when some are missing."""
    text = f"{statistics.median(values):{fmt}}"
    text += f" ({min(values):{fmt}}-{max(values):{fmt}})" if len(values) > 1 else ""
    return text + (f" [{len(values)} of {runs}]" if len(values) < runs else "")


def table(results: dict[str, list[Result]], runs: int, suffix: str = "") -> str:
    ours, qemu = results["qumran-vmm" + suffix], results["QEMU" + suffix]
    keys = list(dict.fromkeys(k for r in ours for k in r))
    head = f"| median of {runs}{',' + suffix if suffix else ''} | qumran-vmm | QEMU | ratio |"
    lines = [head, "|---|---|---|---|"]
    own = []
    for key in keys:
        a, b = ([r[key] for r in rs if key in r] for rs in (ours, qemu))
        if ": " in key:
            own.append(f"| {key} | {_cell(a, runs, '.3g')} |")
        elif b:
            ratio = statistics.median(a) / statistics.median(b)
            lines.append(f"| {key} | {_cell(a, runs)} | {_cell(b, runs)} | {ratio:.2f} |")
    if own:
        lines += ["", f"| qumran-vmm disk, median of {runs} | value |", "|---|---|", *own]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=512)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--fio-seconds", type=int, default=15)
    p.add_argument("--iperf-seconds", type=int, default=10)
    p.add_argument(
        "--only",
        default="dd,fio,net",
        help="comma-separated parts to run: dd, fio, net (default: all)",
    )
    p.add_argument(
        "--vhost",
        action="store_true",
        help="also run the network part with vhost-net on, in both VMMs (a second table)",
    )
    args = p.parse_args()
    args.only = set(args.only.split(","))
    if not args.only <= {"dd", "fio", "net"}:
        p.error(f"--only: unknown part in {sorted(args.only)} (known: dd, fio, net)")
    demo = find_demo()
    initrd = bench_initrd(demo)
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    net = Netns() if os.geteuid() == 0 and load_tun() else None
    if net is None:
        print("no netns/TAP here: network not measured", file=sys.stderr)
    results: dict[str, list[Result]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="qbench-") as tmp:
            image = Path(tmp) / "disk.img"
            # Written out, not sparse: on the RAM-backed /tmp the first VMM to write a hole
            # would pay for allocating and zeroing the file's pages and the next would not.
            with open(image, "wb") as f:
                chunk = bytes(1 << 20)
                for _ in range(args.mib + 16):
                    f.write(chunk)
            for _ in range(args.runs):  # interleaved, so drifting load hits both alike
                for name, argv in contenders(demo, initrd, image, args.vhost).items():
                    parts = args.only & {"net"} if name.endswith(VHOST) else args.only
                    if not parts:
                        continue
                    res = measure(argv, demo, net, args, parts)
                    results.setdefault(name, []).append(res)
                    shown = ", ".join(f"{k} {v:.2f}" for k, v in res.items())
                    print(f"{name}: {shown}", file=sys.stderr, flush=True)
    finally:
        if net is not None:
            net.close()
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
    if "qumran-vmm" in results:
        print(table(results, args.runs))
    if "qumran-vmm" + VHOST in results:
        print()
        print(table(results, args.runs, VHOST))
    return 0


if __name__ == "__main__":
    sys.exit(main())
