"""User-mode networking: qumran-vmm on passt against QEMU q35 -accel kvm on its user-mode
stack (slirp), same kernel, initrd (the bench guest with iperf3, vmm_virtio_tools.py) and
memory. Needs a real KVM and passt; run it inside the test host:

    python -m tests.kvmhost run --timeout 1500 --cwd "$PWD" -- \\
        "$PWD/.venv/bin/python" bench/vmm_passt.py [--runs 2] [--seconds 10]

Nothing leaves the machine: everything runs in a network namespace whose only routes go
to a TAP nobody reads (passt copies its host-side addresses from the interface with the
default route, and the test host has none), and every peer is on its 127.0.0.1. Both
stacks give the guest QEMU's addresses (10.0.2.15, gateway 10.0.2.2 = the host's
loopback), set statically in the guest so that the two runs differ only in the stack:

- guest -> host: ``iperf3 -c 10.0.2.2`` in the guest to ``iperf3 -s`` on 127.0.0.1;
- host -> guest, through a port forward: ``iperf3 -s`` in the guest, ``iperf3 -c
  127.0.0.1 -p 5202`` on the host, forwarded to the guest's 5201 (passt: ``forward=``,
  QEMU: ``hostfwd=``).

Both one TCP stream for ``--seconds``; the sender's summary line. Around each, the CPU time
of the VMM process and (for qumran-vmm) of passt, per GiB moved; after both, qumran-vmm's
passt device counters (frames that waited for the guest's buffers, the most held at once,
waits on passt's full socket) go to stderr. Prints a markdown table; ratio = qumran-vmm /
QEMU. Measures; never asserts.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

from vmm_virtio import CONTROL, QEMU, QUMRAN_VMM, Guest, GuestStuck, cpu_times, find_demo
from vmm_virtio_net import load_tun
from vmm_virtio_tools import LIBRARY_PATH, bench_initrd
from vslib.vmm_control import ask

MEMORY = "256M"
MAC = "52:54:00:12:34:56"
FORWARD = "tcp:127.0.0.1:5202-:5201"
IPERF = f"LD_LIBRARY_PATH={LIBRARY_PATH} iperf3"
Result = dict[str, float]


class LoneNetns:
    """lo up, and a default route over a TAP that nobody reads."""

    def __init__(self) -> None:
        self.name = f"qpbench{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        for cmd in ("link set lo up", "tuntap add qpt0 mode tap",
                    "addr add 192.0.2.2/24 dev qpt0", "link set qpt0 up",
                    "route add default via 192.0.2.1 dev qpt0 onlink"):  # fmt: skip
            subprocess.run(["ip", "-n", self.name, *cmd.split()], check=True)

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def contenders(kernel: str, initrd: str, cmdline: str) -> dict[str, list[str]]:
    return {
        "qumran-vmm": [QUMRAN_VMM, "--name", "bench", "--kernel", kernel, "--initrd", initrd,
                       "--cmdline", cmdline, "--memory", MEMORY, "--control", str(CONTROL),
                       "--net", f"passt,mac={MAC},forward={FORWARD}"],
        "QEMU": [QEMU, "-M", "q35", "-accel", "kvm", "-cpu", "host", "-m", MEMORY,
                 "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
                 "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
                 "-netdev", f"user,id=n0,hostfwd={FORWARD}",
                 "-device", f"virtio-net-pci,netdev=n0,mac={MAC}"],
    }  # fmt: skip


def passt_cpu() -> float:
    """CPU seconds of every passt process (there is one: this bench's)."""
    total = 0.0
    for pid in subprocess.run(["pgrep", "passt"], capture_output=True, text=True).stdout.split():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _summary(out: str, role: str) -> tuple[float, float] | None:
    """GiB and Mbit/s of iperf3's ``role`` (sender/receiver) summary line."""
    m = re.search(rf"([\d.]+) (\w)Bytes\s+([\d.]+) Mbits/sec.*{role}", out)
    if m is None:
        return None
    gib = float(m.group(1)) * {"K": 2**-20, "M": 2**-10, "G": 1.0}[m.group(2)]
    return gib, float(m.group(3))


def measure(argv: list[str], net: LoneNetns, seconds: int, ready: str) -> Result:
    res: Result = {}
    server = subprocess.Popen(net.wrap(["iperf3", "-s", "-B", "127.0.0.1"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    guest = Guest(net.wrap(argv))
    try:
        pid = guest.proc.pid
        guest.wait_for(ready, 240)
        guest.run("ip addr add 10.0.2.15/24 dev eth0; ip link set eth0 up;"
                  " ip route add default via 10.0.2.2")  # fmt: skip
        time.sleep(1)
        for label, run in (("guest->host", _out), ("host->guest (forward)", _in)):
            cpu0, p0 = cpu_times(pid)[0], passt_cpu()
            got = run(guest, net, seconds)
            cpu1, p1 = cpu_times(pid)[0], passt_cpu()
            if got is None:
                continue
            gib, mbit = got
            res[f"{label} Mbit/s"] = mbit
            res[f"{label} CPU s/GiB (VMM + passt)"] = (cpu1 - cpu0 + p1 - p0) / gib
        if "--control" in argv:
            print(f"passt device: {_counters()}", file=sys.stderr)
    except GuestStuck as exc:
        print(f"run cut short: {exc}", file=sys.stderr)
    finally:
        guest.close()
        server.kill()
        server.wait()
    return res


def _counters() -> dict[str, object]:
    try:
        devices = ask(CONTROL, "status")["devices"]
    except (OSError, ValueError, KeyError) as exc:
        return {"unread": str(exc)}
    net = next((d for d in devices if d.get("backend") == "passt"), {})
    keys = ("rx_packets", "rx_no_room", "rx_held_peak", "rx_dropped", "tx_packets", "tx_full",
            "tx_wait_us")  # fmt: skip
    return {k: net[k] for k in keys if k in net}


def _out(guest: Guest, net: LoneNetns, seconds: int) -> tuple[float, float] | None:
    out = guest.run(f"{IPERF} -c 10.0.2.2 -t {seconds} -f m 2>&1 | tail -4", seconds + 90)
    found = _summary(out, "sender")
    if found is None:
        print(f"iperf3 guest->host: {out[-400:]!r}", file=sys.stderr)
    return found


def _in(guest: Guest, net: LoneNetns, seconds: int) -> tuple[float, float] | None:
    guest.run(f"{IPERF} -s -D -p 5201")
    time.sleep(1)
    proc = subprocess.run(net.wrap(["iperf3", "-c", "127.0.0.1", "-p", "5202", "-t",
                                    str(seconds), "-f", "m"]),
                          capture_output=True, text=True, timeout=seconds + 90)  # fmt: skip
    found = _summary(proc.stdout, "sender")
    if found is None:
        print(f"iperf3 host->guest: {proc.stdout[-400:]!r} {proc.stderr[-200:]!r}", file=sys.stderr)
    return found


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--seconds", type=int, default=10)
    args = p.parse_args()
    if os.geteuid() != 0 or not load_tun():
        raise SystemExit("needs root and a TAP for the namespace's default route")
    demo = find_demo()
    initrd = bench_initrd(demo)
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    results: dict[str, list[Result]] = {}
    net = LoneNetns()
    try:
        for _ in range(args.runs):  # interleaved, so drifting load hits both alike
            for name, argv in contenders(str(demo.kernel), str(initrd), demo.cmdline).items():
                res = measure(argv, net, args.seconds, demo.ready_line)
                results.setdefault(name, []).append(res)
                print(f"{name}: {res}", file=sys.stderr, flush=True)
    finally:
        net.close()
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
    keys = list(dict.fromkeys(k for r in results.get("qumran-vmm", []) for k in r))
    print(f"| median of {args.runs} | qumran-vmm (passt) | QEMU (slirp) | ratio |")
    print("|---|---|---|---|")
    for key in keys:
        a, b = ([r[key] for r in results.get(n, []) if key in r] for n in ("qumran-vmm", "QEMU"))
        if a and b:
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"| {key} | {ma:.1f} ({min(a):.1f}-{max(a):.1f}) | {mb:.1f} "
                  f"({min(b):.1f}-{max(b):.1f}) | {ma / mb:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
