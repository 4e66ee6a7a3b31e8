"""Qumran against libvirt on this machine, side by side in one run.

    .venv/bin/python bench/vs_libvirt.py [--quick] [--write]

Measures, for the same guest (the demo kernel + initramfs, q35, TCG, 256 MiB, 1 vCPU):
1. ``qumran list --all`` against ``virsh list --all`` with N defined VMs (hyperfine);
2. ``qumran dominfo`` against ``virsh dominfo`` (hyperfine);
3. start to the guest's ready line: bare QEMU (Qumran's own argv), ``qumran start``,
   ``virsh start`` (median of interleaved runs), and what each stack adds to bare QEMU;
4. the daemons' resident memory, idle, with the N VMs defined and one running.
The table goes to stdout and, for a full run (or with --write), into BENCHMARKS.md
between its vs_libvirt markers. Benchmarks measure; they never assert. Everything the
run starts (daemons, VMs, domains) is removed again, on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vslib import bare
from vslib.cleanup import interrupt, quietly
from vslib.libvirt_stack import LibvirtStack
from vslib.measure import BenchError, cpu_seconds, ensure_commands, hyperfine, rss_kib, run
from vslib.qumran_stack import QumranStack
from vslib.report import Results, render, write_section

REPO = Path(__file__).resolve().parents[1]
PREFIX = "qbench-"  # every VM and domain this benchmark defines starts with it
SETTLE = 0.5  # seconds of quiet between two boots
IDLE = 3.0  # seconds a running VM and its daemon idle before memory is read


@dataclass(frozen=True)
class Plan:
    mode: str
    vms: int
    runs: int  # hyperfine runs per command
    warmup: int  # hyperfine warm-up runs
    boots: int  # measured start-to-ready runs per stack
    boot_warmup: int  # unmeasured rounds first (page cache, libvirt's caches)
    few: int = 10  # `list --all` also with this many VMs defined (before the others)
    many: int = 1000  # ... and with this many (defined after everything else)
    idle_vms: int = 10  # real guests running in each stack while its daemon idles
    idle_seconds: float = 30.0  # the window the idle daemons' CPU is read over
    restarts: int = 3  # daemon restarts measured with the guests running
    fake_vms: int = 100  # qumrand with the fake driver: stand-in VMs running, idle


FULL = Plan("full run", vms=100, runs=30, warmup=3, boots=5, boot_warmup=1)
QUICK = Plan(
    "quick run (fewer VMs and runs)", vms=20, runs=5, warmup=1, boots=1, boot_warmup=0,
    few=5, many=40, idle_vms=2, idle_seconds=5.0, restarts=1, fake_vms=10,
)  # fmt: skip


def log(message: str) -> None:
    print(f"[vs_libvirt {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer VMs and runs (a smoke run)")
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md after --quick")
    parser.add_argument("--boots", type=int, help="measured boots per stack (default 5)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.boots:
        plan = dataclasses.replace(plan, boots=args.boots)
    if os.geteuid() != 0:
        print("vs_libvirt: run as root (it uses the system libvirtd)", file=sys.stderr)
        return 2
    # Ctrl-C and kill both clean up (a background job may even start with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    res = Results()
    cleanup = contextlib.ExitStack()
    try:
        measure_all(plan, res, cleanup)
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
        write_section(REPO / "BENCHMARKS.md", section)
        log("wrote BENCHMARKS.md")
    return 0


def measure_all(plan: Plan, res: Results, cleanup: contextlib.ExitStack) -> None:
    root = Path(tempfile.mkdtemp(prefix="qvl", dir="/tmp"))  # short: UNIX socket paths
    cleanup.callback(quietly("removing " + str(root), lambda: shutil.rmtree(root), log))
    root.chmod(0o755)  # libvirt's QEMU runs as libvirt-qemu and must reach the images
    kernel, initrd, cmdline, ready = _demo_image(root / "image")
    res.meta.update(_machine(plan))
    lv = LibvirtStack(root / "libvirt", kernel, initrd, cmdline)
    log("libvirt: checking packages and daemons")
    ensure_commands({"hyperfine": "hyperfine", "qemu-system-x86_64": "qemu-system-x86"})
    lv.ensure_installed()
    cleanup.callback(quietly("restoring /dev/kvm", lv.restore_kvm_access, log))
    lv.ensure_kvm_access()
    if lv.kvm_saved is not None:
        res.notes.append(
            "/dev/kvm was made 0660 root:kvm for the run (as Debian's udev rule does; "
            "restored after): without it libvirt 9.0 re-probes QEMU on every call."
        )
    cleanup.callback(quietly("stopping libvirt daemons", lv.stop_daemons, log))
    lv.ensure_daemons()
    lv.remove(PREFIX)  # leftovers of an earlier, killed run
    cleanup.callback(quietly("removing libvirt domains", lambda: lv.remove(PREFIX), log))
    q = QumranStack(root / "qumran", REPO / ".venv" / "bin", kernel, initrd, cmdline)
    cleanup.callback(quietly("stopping qumrand", q.stop, log))
    log("qumran: starting qumrand")
    q.compile()
    q.start_daemon()
    names = [f"{PREFIX}{i:04d}" for i in range(max(plan.vms, plan.many))]
    log(f"defining {plan.few} VMs in each stack")
    lv.define_many(names[: plan.few])
    q.define_many(names[: plan.few])
    _list_timing(plan, res, q, f"list@{plan.few}")
    log(f"defining {plan.vms} VMs in each stack")
    lv.define_many(names[plan.few : plan.vms])
    q.define_many(names[plan.few : plan.vms])
    res.versions = _versions(lv, q)
    _cli_timings(plan, res, lv, q, names[plan.vms // 2])
    _boot_timings(plan, res, lv, q, names, root / "bare", ready)
    _memory(res, lv, q, names[plan.vms - 1], ready)
    _idle(plan, res, "qumran", q, names[: plan.idle_vms], ready)
    _idle(plan, res, "libvirt", lv, names[: plan.idle_vms], ready)
    _fake_idle(plan, res, root / "fake", kernel, initrd, cmdline, cleanup)
    log(f"defining {plan.many} VMs in each stack")
    lv.define_many(names[plan.vms : plan.many])
    q.define_many(names[plan.vms : plan.many])
    _list_timing(plan, res, q, f"list@{plan.many}")
    res.meta["load"] += f" → {_load()} (before → after)"
    _method_notes(plan, res)


def _demo_image(folder: Path) -> tuple[Path, Path, str, bytes]:
    """The demo guest, copied where libvirt's unprivileged QEMU can read it."""
    from qumran.images.demo import build_demo

    image = build_demo()
    folder.mkdir(mode=0o755)
    kernel, initrd = folder / "vmlinuz", folder / "initrd.img"
    for source, target in ((image.kernel, kernel), (image.initrd, initrd)):
        shutil.copyfile(source, target)
        target.chmod(0o644)
    return kernel, initrd, image.cmdline, image.ready_line.encode()


VIRSH = "virsh -c qemu:///system"
RAW = REPO / "artifacts" / "vs_libvirt"


def _list_timing(plan: Plan, res: Results, q: QumranStack, op: str) -> None:
    _hyperfine(
        plan, res, q, op, {"qumran": f"{q.cli} list --all", "libvirt": f"{VIRSH} list --all"}
    )


def _hyperfine(
    plan: Plan, res: Results, q: QumranStack, op: str, commands: dict[str, str],
    prepare: dict[str, str] | None = None,
) -> None:  # fmt: skip
    RAW.mkdir(parents=True, exist_ok=True)
    res.meta["raw"] = f"`{RAW.relative_to(REPO)}/*.json`"
    log(f"hyperfine: {op}")
    try:
        timings = hyperfine(
            commands, RAW / f"{op.replace('@', '_')}.json", runs=plan.runs, warmup=plan.warmup,
            env=q.env, prepare=prepare,
        )  # fmt: skip
        res.cli[op] = dict(timings)
    except BenchError as exc:
        res.cli[op] = {"qumran": str(exc), "libvirt": str(exc)}


def _cli_timings(plan: Plan, res: Results, lv: LibvirtStack, q: QumranStack, one: str) -> None:
    _list_timing(plan, res, q, "list")
    dominfo = {"qumran": f"{q.cli} dominfo {one}", "libvirt": f"{VIRSH} dominfo {one}"}
    _hyperfine(plan, res, q, "dominfo", dominfo)
    # define and undefine, each run after the other one put the VM back (hyperfine's
    # --prepare, not timed): the same VM defined and undefined over and over.
    name = f"{PREFIX}def"
    yaml_file, xml_file = q.definition_file(name), lv.definition_file(name)
    define = {"qumran": f"{q.cli} define {yaml_file}", "libvirt": f"{VIRSH} define {xml_file}"}
    undefine = {"qumran": f"{q.cli} undefine {name}", "libvirt": f"{VIRSH} undefine {name}"}
    run(define["qumran"].split(), env=q.env)
    run(define["libvirt"].split())
    _hyperfine(plan, res, q, "define", define, prepare=undefine)
    subprocess.run(undefine["qumran"].split(), env=q.env, capture_output=True)
    subprocess.run(undefine["libvirt"].split(), capture_output=True)
    _hyperfine(plan, res, q, "undefine", undefine, prepare=define)


def _idle(
    plan: Plan, res: Results, stack: str, s: QumranStack | LibvirtStack, names: list[str],
    ready: bytes,
) -> None:  # fmt: skip
    """With ``names`` running and at their ready line, the daemon's CPU over a quiet
    window and its memory then; then the daemon restarted, timed to its first full list."""
    log(f"{stack}: starting {len(names)} guests, then {plan.idle_seconds:.0f} s of quiet")
    try:
        for name in names:
            s.start_to_ready(name, ready)
        time.sleep(IDLE)
        pids = list(s.daemon_pids().values()) if isinstance(s, LibvirtStack) else [s.pid]
        cpu0 = cpu_seconds(pids)
        time.sleep(plan.idle_seconds)
        used = cpu_seconds(pids) - cpu0
        rss = sum(rss_kib(pid) for pid in pids)
        res.idle[stack] = {"vms": len(names), "seconds": plan.idle_seconds, "cpu": used, "rss": rss}
        res.restart[stack] = [s.restart_to_list(len(names)) for _ in range(plan.restarts)]
    except Exception as exc:  # record and go on
        res.idle_errors[stack] = res.restart_errors[stack] = f"{type(exc).__name__}: {exc}"[:300]
        log(f"{stack}: idle measurement failed: {res.idle_errors[stack]}")
    finally:
        for name in names:
            s.destroy(name)


def _fake_idle(
    plan: Plan, res: Results, root: Path, kernel: Path, initrd: Path, cmdline: str,
    cleanup: contextlib.ExitStack,
) -> None:  # fmt: skip
    """qumrand with the fake driver and ``plan.fake_vms`` stand-in VMs running, idle."""
    log(f"qumran, fake driver: {plan.fake_vms} stand-in VMs running, {plan.idle_seconds:.0f} s")
    fake = QumranStack(root, REPO / ".venv" / "bin", kernel, initrd, cmdline, driver="fake")
    cleanup.callback(quietly("stopping the fake qumrand", fake.stop, log))
    try:
        fake.start_daemon()
        names = [f"{PREFIX}fake{i:04d}" for i in range(plan.fake_vms)]
        fake.define_many(names)
        fake.start_many(names)
        time.sleep(IDLE)
        cpu0 = cpu_seconds([fake.pid])
        time.sleep(plan.idle_seconds)
        used = cpu_seconds([fake.pid]) - cpu0
        res.idle["fake"] = {"vms": len(names), "seconds": plan.idle_seconds, "cpu": used,
                            "rss": rss_kib(fake.pid)}  # fmt: skip
    except Exception as exc:
        res.idle_errors["fake"] = f"{type(exc).__name__}: {exc}"[:300]
        log(f"fake qumrand: idle measurement failed: {res.idle_errors['fake']}")
    finally:
        fake.stop()


def _boot_timings(
    plan: Plan, res: Results, lv: LibvirtStack, q: QumranStack, names: list[str], bare_dir: Path,
    ready: bytes,
) -> None:  # fmt: skip
    definition = {"name": "qbench-bare", "memory": "256M", "vcpus": 1, "boot": {
        "kernel": str(lv.kernel), "initrd": str(lv.initrd), "cmdline": lv.cmdline}}  # fmt: skip
    stacks: dict[str, tuple[Callable[[str], dict[str, float]], Callable[[str], None]]] = {
        "bare": (lambda n: bare.start_to_ready(definition, bare_dir, ready), lambda n: None),
        "qumran": (lambda n: q.start_to_ready(n, ready), q.destroy),
        "libvirt": (lambda n: lv.start_to_ready(n, ready), lv.destroy),
    }
    res.start = {stack: [] for stack in stacks}
    order = list(stacks)
    for round_ in range(plan.boot_warmup + plan.boots):
        name = names[round_]  # a fresh VM each round: no console output left from before
        order = order[1:] + order[:1]  # rotate, so no stack always boots first
        for stack in order:
            if stack in res.start_errors:
                continue
            measure, stop = stacks[stack]
            try:
                times = measure(name)
            except Exception as exc:  # record and go on: one broken stack spoils no other
                res.start_errors[stack] = f"{type(exc).__name__}: {exc}"[:300]
                log(f"{stack}: start failed: {res.start_errors[stack]}")
                continue
            finally:
                stop(name)
                time.sleep(SETTLE)
            log(f"{stack}: {name}: " + ", ".join(f"{k} {v:.3f} s" for k, v in times.items()))
            if round_ >= plan.boot_warmup:
                res.start[stack].append(times)


def _memory(res: Results, lv: LibvirtStack, q: QumranStack, name: str, ready: bytes) -> None:
    log(f"memory: starting {name} in both stacks")
    try:
        for start in (q.start_to_ready, lv.start_to_ready):
            start(name, ready)
        time.sleep(IDLE)
        res.rss["qumran"] = {"qumrand": rss_kib(q.pid)}
        res.rss["libvirt"] = {n: rss_kib(pid) for n, pid in lv.daemon_pids().items()}
    except Exception as exc:
        res.rss_errors["qumran"] = res.rss_errors["libvirt"] = f"{type(exc).__name__}: {exc}"
    finally:
        q.destroy(name)
        lv.destroy(name)


def _machine(plan: Plan) -> dict[str, str]:
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
        "mode": plan.mode,
        "vms": str(plan.vms),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "os": f"{distro}, Linux {platform.release()}",
        "load": _load(),
        "accel": bare.accelerator().upper(),
        "command": " ".join([".venv/bin/python", "bench/vs_libvirt.py", *sys.argv[1:]]),
    }


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _versions(lv: LibvirtStack, q: QumranStack) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True)
        return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"

    qemu = first_line(["qemu-system-x86_64", "--version"]).split("version")[-1].strip()
    return {
        **q.versions(),
        **lv.versions(),
        "QEMU": qemu,
        "Python": platform.python_version(),
        "hyperfine": first_line(["hyperfine", "--version"]).split()[-1],
    }


def _method_notes(plan: Plan, res: Results) -> None:
    n = plan.vms
    res.notes += [
        f"CLI rows: hyperfine without a shell, {plan.warmup} warm-up runs, {plan.runs} runs "
        "per command, qumran's runs then virsh's; median and (min to max). `list --all` with "
        f"{plan.few}, {n} and {plan.many} VMs defined in each stack (`qumran define` from "
        "YAML files, `virsh define` from XML with direct kernel boot; real QEMU driver, all "
        "shut off); `dominfo` of a shut-off VM; `define` of a YAML file against `virsh "
        "define` of the same machine's XML, each run after an untimed undefine (hyperfine's "
        "--prepare), and `undefine` after an untimed define. Ratios and targets use the "
        "medians, robust to load spikes from other work. Qumran's modules are byte-compiled "
        "first, as an installed package's are; `qumran` is the venv's pip-made launcher.",
        f"Start → ready: {plan.boots} measured rounds (after {plan.boot_warmup} unmeasured), "
        "stacks interleaved in rotating order, a different VM each round, each boot destroyed "
        "before the next. Ready = the guest printed `QUMRAN-DEMO READY` on its serial console.",
        "bare QEMU: the argv `qumran.drivers.qemu.cmdline.build_argv` gives for the same "
        "definition, exec'd directly; ready seen in the console log file QEMU writes (5 ms poll).",
        "qumran: from running `qumran start` to the ready line arriving on the daemon's console "
        "WebSocket (what `qumran console` shows a user), connected as soon as `start` returns.",
        "libvirt: from running `virsh start` to the ready line in the domain's "
        "`<serial type='file'>` (5 ms poll); domain type `qemu`, q35, `<cpu mode='maximum'/>`, "
        "ACPI on, no USB controller, no balloon, ISA pvpanic: the machine Qumran runs.",
        "Added on top of bare QEMU = the stack's median minus bare QEMU's median. The guest's "
        "own boot varies by several hundred ms between boots on a loaded machine, more than a "
        "stack adds, so the ↳ rows also take the start apart, leaving the boot out: when the "
        "hypervisor process was forked (its /proc/PID/stat start time, to 10 ms), when the "
        "start command returned, and how long the ready line took from QEMU to the reader "
        "(qumran: the console WebSocket against the console log file QEMU writes, to ±5 ms). "
        "Qumran's QEMU runs the guest from exec, like bare QEMU, so qumran adds about forked + "
        "delivery; libvirt starts QEMU paused (`-S`), works over QMP, and resumes it just "
        "before `virsh start` returns, so libvirt adds about returned minus bare QEMU's exec → "
        "first QMP reply (QMP commands run in the main loop, which starts with the guest). "
        "Seen here but not explained: in quiet runs libvirt's guest, resumed ~250 ms after "
        "exec, reached the ready line about as early as bare QEMU's, so the two estimates of "
        "libvirt's added time can disagree by ~200 ms.",
        "Daemon CPU time (utime + stime from /proc, to 10 ms) is what qumrand, or libvirtd + "
        "virtlogd, used between the start command and the ready line: on 2 CPUs shared with "
        "a TCG guest it is time the guest may have waited for, which the ↳ estimate leaves out.",
        "Memory: VmRSS from /proc/PID/status of qumrand, and of libvirtd + virtlogd (+ virtlockd "
        f"when running), {IDLE:.0f} s after one VM of each stack reached its ready line, "
        f"with {n} VMs defined.",
        f"Idle: {plan.idle_vms} real guests started in one stack (each to its ready line), "
        f"{IDLE:.0f} s of settling, then the daemons' utime + stime (/proc, 10 ms ticks) over "
        f"{plan.idle_seconds:.0f} s with nothing asked of them; memory read at the end of "
        "that window; then the other stack the same way. The target is the issue's: 0.01 % "
        "of a CPU per running VM.",
        f"Fake driver: a second qumrand, `--driver fake`, with {plan.fake_vms} stand-in VM "
        "processes started (real processes, watched the same way: pidfd, the SIGSTOP timer, "
        f"stats), {plan.idle_seconds:.0f} s idle. libvirt has no equivalent short of as many "
        "real guests, so that row has qumran alone.",
        f"Restart: with the {plan.idle_vms} guests still running, SIGTERM to the daemon, wait "
        "for it to exit, exec it again (`qumrand ...`; `libvirtd -d`), and time from that "
        "exec until `qumran list` / `virsh list --name` first succeeds showing every guest "
        f"running (2 ms between tries); {plan.restarts} restarts each.",
    ]


if __name__ == "__main__":
    sys.exit(main())
