"""Qumran's NAT network against libvirt's default network, side by side in one run.

    PYTHONPATH=src .venv/bin/python bench/vs_network.py [--quick] [--write]

Both stacks run inside network namespaces the run makes (vslib/net_stacks.py): their
bridges, TAPs, dnsmasq and NAT rules live there and go away with them; no packet leaves
this machine. The same guest in both (the demo kernel and initramfs plus the host's
iperf3, vslib/netguest.py), q35 under TCG, 256 MiB, 1 vCPU, a virtio NIC on the network
``default`` (192.168.122.1/24, DHCP .2-.254, NAT: libvirt's default, and Qumran's).
Measures:
1. ``qumran net-start default`` against ``virsh net-start default`` (hyperfine, each
   run after an untimed net-destroy);
2. from the start command to the VM's TAP up in the bridge, to the guest's link up and
   to its first DHCP lease (a guest booted again each round, the stacks interleaved);
3. with two guests up in each stack: VM → VM, VM → host and host → VM TCP throughput
   (iperf3) and VM → VM and host → VM round trips (ping), the stacks taking turns.
The table goes to stdout and, for a full run (or with --write), into BENCHMARKS.md
between its vs_network markers. Benchmarks measure; they never assert. Everything the
run starts (namespaces, daemons, VMs) is removed again, on Ctrl-C too. Run as root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType

from vslib import netguest
from vslib.create_report import write_between
from vslib.libvirt_stack import LibvirtStack
from vslib.measure import POLL, BenchError, ensure_commands, hyperfine, median, now, run
from vslib.net_report import BEGIN, END, STACKS, NetResults, render
from vslib.net_stacks import (
    HOST,
    Guest,
    LibvirtNet,
    LinkWatch,
    Netns,
    QumranNet,
    Stack,
    qemu_nic_args,
)

REPO = Path(__file__).resolve().parents[1]
BOOT_TIMEOUT = 180.0
SETTLE = 1.0  # seconds of quiet between two measurements
# A guest's shell over the control port: send the command, half-close, read to EOF.
CONTROL_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
s.sendall(sys.stdin.buffer.read()); s.shutdown(socket.SHUT_WR)
out = b""
while chunk := s.recv(65536):
    out += chunk
sys.stdout.buffer.write(out)
"""


@dataclass(frozen=True)
class Plan:
    mode: str
    net_runs: int  # hyperfine runs of net-start per stack
    net_warmup: int
    boots: int  # measured boots per stack
    boot_warmup: int
    rounds: int  # traffic rounds per stack
    seconds: int  # iperf3 -t
    pings: int  # pings per round trip measurement


FULL = Plan("full run", net_runs=10, net_warmup=1, boots=5, boot_warmup=1, rounds=5,
            seconds=5, pings=30)  # fmt: skip
QUICK = Plan("quick run", net_runs=3, net_warmup=0, boots=1, boot_warmup=0, rounds=1,
             seconds=2, pings=5)  # fmt: skip


def log(message: str) -> None:
    print(f"[vs_network {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run of each, short")
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md after --quick")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if os.geteuid() != 0:
        print("vs_network: run as root (network namespaces, libvirtd)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    res = NetResults()
    cleanup = contextlib.ExitStack()
    try:
        measure(res, cleanup, plan)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    except BenchError as exc:
        log(f"cannot measure: {exc}; cleaning up")
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not stop the clean-up
        cleanup.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    section = render(res)
    print(section)
    if not args.quick or args.write:
        write_between(REPO / "BENCHMARKS.md", BEGIN, END, section)
        log("wrote BENCHMARKS.md")
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _quietly(what: str, action: Callable[[], object]) -> Callable[[], None]:
    def run_it() -> None:
        try:
            action()
        except Exception as exc:  # clean-up goes on with the next step
            log(f"clean-up: {what} failed: {exc}")

    return run_it


def measure(res: NetResults, cleanup: contextlib.ExitStack, plan: Plan) -> None:
    res.meta.update(_machine())
    res.meta["mode"] = plan.mode
    ensure_commands({
        "virsh": "libvirt-clients", "libvirtd": "libvirt-daemon-system",
        "iperf3": "iperf3", "dnsmasq": "dnsmasq-base", "hyperfine": "hyperfine",
        "qemu-system-x86_64": "qemu-system-x86", "ping": "iputils-ping",
    })  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="qvn", dir="/tmp"))  # short: UNIX socket paths
    cleanup.callback(_quietly("removing " + str(root), lambda: shutil.rmtree(root)))
    root.chmod(0o755)  # libvirt's QEMU runs as libvirt-qemu and must reach the guest
    guest = _guest(root / "image")
    tag = f"qvn{os.getpid() % 100000}"
    stacks: dict[str, Stack] = {}

    lv_kvm = LibvirtStack(root, guest.kernel, guest.initrd, guest.cmdline)
    cleanup.callback(_quietly("restoring /dev/kvm", lv_kvm.restore_kvm_access))
    lv_kvm.ensure_kvm_access()
    if lv_kvm.kvm_saved is not None:
        res.notes.append(
            "/dev/kvm was made 0660 root:kvm for the run (as Debian's udev rule does; "
            "restored after): without it libvirt 9.0 re-probes QEMU on every call."
        )
    for label in STACKS:
        ns = Netns(f"{tag}-{label[0]}")
        cleanup.callback(_quietly(f"deleting namespace {ns.name}", ns.delete))
        stack: Stack
        if label == "qumran":
            q = QumranNet(root / "qumran", Path(sys.executable).parent, guest, ns)
            cleanup.callback(_quietly("stopping qumrand", q.stop))
            log(f"qumran: starting qumrand in {ns.name}")
            run([str(q.bin_dir / "python"), "-m", "compileall", "-q", str(_package())])
            q.start_daemon()
            res.versions["qumran"] = q.version()
            stack = q
        else:
            lv = LibvirtNet(root / "libvirt", guest, ns)
            cleanup.callback(_quietly("stopping libvirt's daemons", lv.stop))
            log(f"libvirt: starting virtlogd + libvirtd in {ns.name} (and their mount namespace)")
            lv.start_daemons()
            res.versions["libvirt"] = lv.version()
            stack = lv
        stacks[label] = stack
    res.versions["QEMU"] = run(["qemu-system-x86_64", "--version"]).split("version")[1].split()[0]
    res.versions["dnsmasq"] = run(["dnsmasq", "--version"]).split()[2]
    res.versions["iperf3"] = run(["iperf3", "--version"]).split()[1]
    res.versions["Python"] = platform.python_version()

    _net_start(res, stacks, plan, root)
    for stack in stacks.values():
        for name in ("a", "b"):
            stack.define_vm(f"{tag}{name}")
    _boots(res, stacks, plan, tag)
    _traffic(res, stacks, plan, tag, cleanup)
    res.meta["load"] += f" → {_load()} (before → after)"
    _notes(res, plan)


def _package() -> Path:
    import qumran

    return Path(qumran.__file__).parent


def _guest(folder: Path) -> Guest:
    """The demo guest's kernel and the bench initramfs, copied where libvirt-qemu reads."""
    from qumran.images.demo import build_demo

    image = build_demo()
    folder.mkdir(mode=0o755)
    kernel = folder / "vmlinuz"
    shutil.copyfile(image.kernel, kernel)
    kernel.chmod(0o644)
    iperf3 = shutil.which("iperf3")
    if iperf3 is None:
        raise BenchError("iperf3 is not installed")
    initrd = netguest.build_initrd(image.initrd, Path(iperf3), folder / "initrd.img")
    return Guest(kernel, initrd, image.cmdline)


# --- net-start -------------------------------------------------------------------------


def _net_start(res: NetResults, stacks: dict[str, Stack], plan: Plan, root: Path) -> None:
    for label, stack in stacks.items():
        log(f"{label}: net-start, {plan.net_runs} runs")
        try:
            timings = hyperfine(
                {label: shlex.join(stack.net_start_argv())}, root / f"net-start-{label}.json",
                runs=plan.net_runs, warmup=plan.net_warmup, env=stack.env,
                prepare={label: shlex.join(stack.net_destroy_argv())},
            )  # fmt: skip
            res.net_start[label] = timings[label]
        except BenchError as exc:
            res.net_start[label] = str(exc)[:300]
        stack.ensure_network()


# --- start → link up and first lease ---------------------------------------------------


def _boots(res: NetResults, stacks: dict[str, Stack], plan: Plan, tag: str) -> None:
    order = list(stacks)
    res.boots = {label: [] for label in stacks}
    for round_ in range(plan.boot_warmup + plan.boots):
        order = order[1:] + order[:1]
        for label in order:
            if label in res.errors:
                continue
            stack = stacks[label]
            name = f"{tag}a"
            try:
                times, _, _ = boot(stack, name)
            except Exception as exc:  # one broken stack spoils no other
                res.errors[label] = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
                log(f"{label}: boot failed: {res.errors[label]}")
                continue
            finally:
                stack.destroy_vm(name)
                time.sleep(SETTLE)
            what = "warm-up" if round_ < plan.boot_warmup else f"boot {round_ + 1}"
            log(f"{label} {what}: " + ", ".join(f"{k} {v:.3f}" for k, v in times.items()))
            if round_ >= plan.boot_warmup:
                res.boots[label].append(times)


def boot(stack: Stack, name: str) -> tuple[dict[str, float], str, int]:
    """Start ``name`` and follow it to its servers being up; the times (seconds from the
    start command), the address it leased and its QEMU's pid."""
    watch = LinkWatch(stack.ns, stack.bridge)
    try:
        t0 = now()
        pid, console = stack.start_vm(name)
        returned = now()
        seen = watch_console(console, t0 + BOOT_TIMEOUT)
    finally:
        tap_up = watch.close()
    lines = {line.what: line for line in seen}
    link, lease = lines[netguest.LINK], lines[netguest.LEASE]
    times = {
        "returned": returned - t0,
        "link": seen[link] - t0,
        "lease": seen[lease] - t0,
        "dhcp": lease.uptime - link.uptime,
        "up": seen[lines[netguest.UP]] - t0,
    }
    if tap_up is not None:
        times["tap_up"] = tap_up - t0
    if lease.address is None:
        raise BenchError(f"{name}: the lease line names no address")
    return times, lease.address, pid


def watch_console(path: Path, deadline: float) -> dict[netguest.ConsoleLine, float]:
    """When each bench line appeared in the console file (:func:`now`), until the last
    one (UP) is there."""
    offset, pending = 0, ""
    seen: dict[netguest.ConsoleLine, float] = {}
    while now() < deadline:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            at = now()
            offset += len(chunk)
            text = pending + chunk.decode(errors="replace")
            complete, _, pending = text.rpartition("\n")
            for line in netguest.console_lines(complete):
                seen.setdefault(line, at)
                if line.what == netguest.UP:
                    return seen
        time.sleep(POLL)
    raise BenchError(f"the guest did not say {netguest.UP} in {path} in time: {seen}")


# --- traffic ---------------------------------------------------------------------------


def _traffic(
    res: NetResults, stacks: dict[str, Stack], plan: Plan, tag: str,
    cleanup: contextlib.ExitStack,
) -> None:  # fmt: skip
    addresses: dict[str, dict[str, str]] = {}
    for label, stack in stacks.items():
        if label in res.errors:
            continue
        try:
            addresses[label] = {}
            for name in ("a", "b"):
                vm = f"{tag}{name}"
                cleanup.callback(_quietly(f"destroying {vm}", partial(stack.destroy_vm, vm)))
                _, addresses[label][name], pid = boot(stack, vm)
            res.nic_args[label] = f"{qemu_nic_args(pid)}`; its TAPs: `{_taps(stack)}"
            server = subprocess.Popen(
                stack.ns.argv("iperf3", "-s", "-B", HOST), stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            cleanup.callback(_quietly(f"stopping {label}'s host iperf3", server.kill))
        except Exception as exc:
            res.errors[label] = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
            log(f"{label}: bringing two guests up failed: {res.errors[label]}")
    order = list(stacks)
    res.traffic = {label: {} for label in stacks}
    for round_ in range(plan.rounds):
        order = order[1:] + order[:1]
        for label in order:
            if label in res.errors:
                continue
            try:
                got = traffic_round(stacks[label], addresses[label], plan)
            except Exception as exc:
                res.errors[label] = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
                log(f"{label}: traffic failed: {res.errors[label]}")
                continue
            for key, value in got.items():
                res.traffic[label].setdefault(key, []).append(value)
            log(f"{label} round {round_ + 1}: " + ", ".join(
                f"{k} {v / 1e6:.0f} Mbit/s" if k.endswith("bps") else f"{k} {v * 1000:.2f} ms"
                for k, v in got.items()))  # fmt: skip


def _taps(stack: Stack) -> str:
    """The bridge's ports as `ip link` shows them: name, queueing discipline, flags."""
    ports = json.loads(run(["ip", "-n", stack.ns.name, "-j", "link", "show", "master",
                            stack.bridge]))  # fmt: skip
    return "; ".join(
        f"{p['ifname']} qdisc {p.get('qdisc', '?')} txqlen {p.get('txqlen', '?')} "
        f"mtu {p.get('mtu', '?')}"
        for p in ports
    )


def traffic_round(stack: Stack, ips: dict[str, str], plan: Plan) -> dict[str, float]:
    a, b = ips["a"], ips["b"]
    t = str(plan.seconds)
    out: dict[str, float] = {}
    out["vm_vm_bps"] = netguest.iperf_bps(guest_sh(stack, a, f"iperf3 -J -t {t} -c {b}", plan))
    time.sleep(SETTLE)
    out["vm_host_bps"] = netguest.iperf_bps(guest_sh(stack, a, f"iperf3 -J -t {t} -c {HOST}", plan))
    time.sleep(SETTLE)
    host = run(stack.ns.argv("iperf3", "-J", "-t", t, "-c", a), timeout=plan.seconds + 60)
    out["host_vm_bps"] = netguest.iperf_bps(host)
    time.sleep(SETTLE)
    pings = f"ping -c {plan.pings} -i 0.2 {b}"
    out["vm_vm_rtt"] = _median_rtt(guest_sh(stack, a, pings, plan))
    host_ping = run(stack.ns.argv("ping", "-n", "-c", str(plan.pings), "-i", "0.2", a),
                    timeout=plan.pings + 30)  # fmt: skip
    out["host_vm_rtt"] = _median_rtt(host_ping)
    return out


def _median_rtt(out: str) -> float:
    rtts = netguest.ping_rtts(out)
    if not rtts:
        raise BenchError(f"no replies: {out.strip()[-300:]}")
    return median(rtts)


def guest_sh(stack: Stack, address: str, command: str, plan: Plan) -> str:
    """Run ``command`` in the guest's shell (its control port), from the stack's namespace;
    what it printed (BenchError if it failed)."""
    timeout = plan.seconds + plan.pings + 60
    argv = stack.ns.argv(sys.executable, "-c", CONTROL_CLIENT, address,
                         str(netguest.CONTROL_PORT), str(timeout))  # fmt: skip
    done = subprocess.run(argv, input=f"{command} 2>&1; echo =RC=$?\n", capture_output=True,
                          text=True, timeout=timeout + 10)  # fmt: skip
    body, _, rc = done.stdout.rpartition("=RC=")
    if done.returncode != 0 or rc.strip() != "0":
        raise BenchError(f"guest {address}: {command}: {(done.stderr + done.stdout)[-400:]}")
    return body


# --- the record ------------------------------------------------------------------------


def _machine() -> dict[str, str]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    debian = Path("/etc/debian_version")
    distro = f"Debian {debian.read_text().strip()}" if debian.exists() else platform.platform()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, {cpu}, {distro}, Linux {platform.release()}",
        "load": _load(),
        "command": " ".join(["PYTHONPATH=src .venv/bin/python bench/vs_network.py", *sys.argv[1:]]),
    }


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _notes(res: NetResults, plan: Plan) -> None:
    res.notes += [
        "Where: each stack in a network namespace the run makes (`ip netns add`); qumrand "
        "exec'd in its own (it defines its `default` NAT network there on its first start "
        "as root: 192.168.122.1/24, DHCP .2-.254); virtlogd + libvirtd in theirs and in a "
        "mount namespace of their own whose /etc/libvirt (a copy, no network defined), "
        "/run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are the "
        "run's folders, with libvirt's stock default network defined there (`<forward "
        "mode='nat'/>`, virbr0 with `stp='on' delay='0'`, 192.168.122.1/24, DHCP .2-.254). "
        "The bridges, TAPs, dnsmasq and firewall rules (qumrand's nftables table, "
        'libvirt\'s iptables rules) live in those namespaces; "the host" below is the '
        "bridge's namespace and its address 192.168.122.1. No packet leaves the machine.",
        "The guest: the demo guest (Debian's cloud kernel, busybox initramfs) with a second "
        "archive appended holding the host's iperf3 and the libraries `ldd` names, and a "
        "boot script run once by busybox init: eth0 up, wait for its carrier, `udhcpc -q "
        "-T 1`, `iperf3 -s -D`, `nc -ll -p 7000 -e /bin/sh` (the control port), each step "
        "printed on the serial console with the guest's uptime. q35, TCG, `-cpu max`, "
        "256 MiB, 1 vCPU, one virtio NIC on the network (libvirt: `<interface "
        "type='network'>`, model virtio; qumran: `nics: [{network: default}]`); "
        "/dev/vhost-net does not exist on this host, so both NICs are QEMU's userspace "
        "virtio-net on a TAP. Both guests of a stack run while its traffic is measured; "
        "the other stack's two guests idle meanwhile.",
        f"net-start: hyperfine without a shell, {plan.net_warmup} warm-up and "
        f"{plan.net_runs} runs per stack, each after an untimed `net-destroy` (hyperfine's "
        "--prepare), no VM defined yet; median and (min to max). Each command returns when "
        "its daemon says the network is up: bridge, address, dnsmasq, firewall rules.",
        f"Start → link up / lease: {plan.boots} measured boots per stack after "
        f"{plan.boot_warmup} unmeasured, the stacks taking turns (order rotating), the "
        "same VM each time (so dnsmasq knows its MAC after the first), destroyed after "
        "each. From running `qumran start` / `virsh start` to: the command returning; "
        "the VM's TAP showing up in the bridge, admin and carrier up (`ip -o monitor link` "
        "in the namespace, an event); the guest's `BENCH-LINK` and `BENCH-LEASE` lines "
        "in the serial console file each stack has QEMU write (qumrand's console.log, "
        "libvirt's `<serial type='file'>`), polled every 5 ms by the same watcher. The "
        "guest's boot under TCG is most of these times and is the same in both. The DHCP "
        "exchange row is the guest's own clock from carrier to configured lease.",
        f"Traffic: {plan.rounds} rounds, the stacks taking turns; in each, `iperf3 -J -t "
        f"{plan.seconds}` (one TCP stream, default settings) from guest a to guest b, from "
        "guest a to the host's `iperf3 -s` on the bridge's address, and from the host to "
        "guest a, the receiver's bits per second; then "
        f"{plan.pings} pings 0.2 s apart from guest a to guest b (busybox ping) and from "
        "the host to guest a (iputils ping), the median of each run's replies. The guest's "
        "commands go over its control port from the bridge's namespace, between "
        "measurements. Met: qumran's median is no worse than libvirt's, or lies within the "
        "range of libvirt's own runs (its run-to-run noise).",
    ]


if __name__ == "__main__":
    sys.exit(main())
