"""The same libvirt client against two servers, in one run: qumrand's libvirt-sock and
libvirtd (the system instance, started by hand if it is not running).

    PYTHONPATH=src .venv/bin/python bench/vs_libvirt_protocol.py [--quick] [--write]

Both are reached the same way, ``qemu+unix:///system?socket=PATH``, by Debian's virsh and
python3-libvirt, with N VMs defined in each (all shut off; the same machine: the demo
kernel + initramfs, 256 MiB, 1 vCPU, each server's own domain XML for it):
1. ``virsh list --all``, ``virsh dominfo NAME``, ``virsh define FILE``, ``virsh undefine
   NAME`` (hyperfine, each run a new virsh process: connect, call, close);
2. python3-libvirt's ``listAllDomains()`` and ``getAllDomainStats()`` on one open
   connection, each call timed (rounds interleaved between the servers).
The table goes to stdout and, for a full run (or with --write), into BENCHMARKS.md
between its vs_libvirt_protocol markers. Benchmarks measure; they never assert. Every VM
and domain the run defines is removed again, on Ctrl-C too. Run as root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import yaml
from vslib.libvirt_stack import LibvirtStack
from vslib.measure import BenchError, ensure_commands, run
from vslib.protocol_report import SERVERS, ProtocolResults, Samples, render, write_between
from vslib.qumran_stack import QumranStack

REPO = Path(__file__).resolve().parents[1]
PREFIX = "qproto-"  # every VM and domain this benchmark defines starts with it
LIBVIRTD_SOCKET = "/run/libvirt/libvirt-sock"
BATCH = 25  # virsh commands per virsh process when defining or removing many
RAW = REPO / "artifacts" / "vs_libvirt_protocol"


@dataclass(frozen=True)
class Plan:
    mode: str
    vms: int
    runs: int  # virsh: hyperfine runs per command, over all rounds
    warmup: int  # untimed runs (virsh) or calls (python3-libvirt) before each round's
    rounds: int  # rounds per server, the order of the servers swapped each round
    calls: int  # python3-libvirt: timed calls per round


FULL = Plan("full run", vms=100, runs=30, warmup=3, rounds=3, calls=50)
QUICK = Plan("quick run (fewer VMs and runs)", vms=20, runs=6, warmup=1, rounds=2, calls=10)

# Run by Debian's /usr/bin/python3 (python3-libvirt): one connection, `warmup` untimed
# calls, then `calls` timed ones; the per-call seconds as JSON, or libvirt's error.
CLIENT = r"""
import json, sys, time, libvirt
uri, op, calls, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
libvirt.registerErrorHandler(lambda ctx, err: None, None)  # no stderr noise per error
conn = libvirt.open(uri)
call = {"listAllDomains": lambda: conn.listAllDomains(0),
        "getAllDomainStats": lambda: conn.getAllDomainStats(0, 0)}[op]
try:
    for _ in range(warmup):
        call()
    count = len(call())
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
except libvirt.libvirtError as exc:
    print(json.dumps({"error": exc.get_error_message()}))
else:
    print(json.dumps({"times": times, "domains": count}))
"""


def log(message: str) -> None:
    print(f"[vs_libvirt_protocol {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer VMs and runs (a smoke run)")
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md after --quick")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if os.geteuid() != 0:
        print("vs_libvirt_protocol: run as root (it uses the system libvirtd)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    res = ProtocolResults()
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
        write_between(REPO / "BENCHMARKS.md", section)
        log("wrote BENCHMARKS.md")
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _quietly(what: str, action: Callable[[], object]) -> Callable[[], None]:
    def attempt() -> None:
        try:
            action()
        except Exception as exc:  # clean-up goes on with the next step
            log(f"clean-up: {what} failed: {exc}")

    return attempt


def measure_all(plan: Plan, res: ProtocolResults, cleanup: contextlib.ExitStack) -> None:
    root = Path(tempfile.mkdtemp(prefix="qvp", dir="/tmp"))  # short: UNIX socket paths
    cleanup.callback(_quietly("removing " + str(root), lambda: shutil.rmtree(root)))
    root.chmod(0o755)  # libvirt's QEMU user must reach the images to define domains
    kernel, initrd, cmdline = _demo_image(root / "image")
    res.meta.update(_machine(plan))
    ensure_commands({"hyperfine": "hyperfine", "virsh": "libvirt-clients"})
    if subprocess.run(["/usr/bin/python3", "-c", "import libvirt"]).returncode != 0:
        run(["apt-get", "install", "-y", "--no-install-recommends", "python3-libvirt"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=900)  # fmt: skip
    lv = LibvirtStack(root / "libvirt", kernel, initrd, cmdline)
    lv.ensure_installed()
    cleanup.callback(_quietly("restoring /dev/kvm", lv.restore_kvm_access))
    lv.ensure_kvm_access()
    cleanup.callback(_quietly("stopping libvirt daemons", lv.stop_daemons))
    log("libvirtd: checking it runs")
    lv.ensure_daemons()
    uris = {"libvirtd": f"qemu+unix:///system?socket={LIBVIRTD_SOCKET}"}
    q = QumranStack(root / "qumran", Path(sys.executable).parent, kernel, initrd, cmdline)
    cleanup.callback(_quietly("stopping qumrand", q.stop))
    log("qumrand: starting it")
    q.compile()
    q.start_daemon()
    uris["qumrand"] = f"qemu+unix:///system?socket={q.root / 'libvirt-sock'}"
    xml: dict[str, Xml] = {"libvirtd": lv.domain_xml, "qumrand": lambda n: _qumran_xml(q, n)}
    names = [f"{PREFIX}{i:04d}" for i in range(plan.vms)]
    _remove(uris["libvirtd"], PREFIX)  # leftovers of an earlier, killed run
    # qumrand's go with its state folder; libvirtd's domains must be undefined.
    cleanup.callback(_quietly("removing libvirtd's domains",
                              lambda: _remove(uris["libvirtd"], PREFIX)))  # fmt: skip
    for server in SERVERS:
        log(f"{server}: defining {plan.vms} VMs with virsh")
        _define_many(uris[server], xml[server], names, root / server)
    res.versions = _versions(lv, q)
    _virsh_rows(plan, res, uris, xml, names[plan.vms // 2], root)
    for op in ("listAllDomains", "getAllDomainStats"):
        _python_row(plan, res, uris, op)
    res.meta["load"] += f" → {_load()} (before → after)"
    _notes(plan, res)


def _demo_image(folder: Path) -> tuple[Path, Path, str]:
    """The demo guest, copied where libvirt's unprivileged QEMU can read it."""
    from qumran.images.demo import build_demo

    image = build_demo()
    folder.mkdir(mode=0o755)
    kernel, initrd = folder / "vmlinuz", folder / "initrd.img"
    for source, target in ((image.kernel, kernel), (image.initrd, initrd)):
        shutil.copyfile(source, target)
        target.chmod(0o644)
    return kernel, initrd, image.cmdline


def _qumran_xml(q: QumranStack, name: str) -> str:
    """Qumran's domain XML for the machine QumranStack defines from YAML."""
    from qumran.config import domxml
    from qumran.config.validate import validate_spec

    spec = validate_spec(yaml.safe_load(q.definition(name)))
    return domxml.to_xml(name, str(uuid.uuid4()), spec)


def _virsh(uri: str, script: str, check: bool = True) -> str:
    done = subprocess.run(["virsh", "-c", uri, script], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    if check and done.returncode != 0:
        raise BenchError(f"virsh -c {uri} {script[:60]}...: {done.stderr.strip()[-500:]}")
    return done.stdout


Xml = Callable[[str], str]  # a VM's name -> the server's domain XML for it


def _define_many(uri: str, xml: Xml, names: list[str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    commands = []
    for name in names:
        path = folder / f"{name}.xml"
        path.write_text(xml(name))
        commands.append(f"define {path}")
    for i in range(0, len(commands), BATCH):
        _virsh(uri, " ; ".join(commands[i : i + BATCH]))


def _remove(uri: str, prefix: str) -> None:
    listing = subprocess.run(["virsh", "-c", uri, "list", "--all", "--name"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    ours = [n for n in listing.stdout.split() if n.startswith(prefix)]
    for i in range(0, len(ours), BATCH):
        _virsh(uri, " ; ".join(f"undefine {n}" for n in ours[i : i + BATCH]), check=False)


def _hyperfine_row(
    plan: Plan, res: ProtocolResults, op: str, label: str, commands: dict[str, str],
    prepare: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """hyperfine in rounds, the servers' order swapped each round (hyperfine runs one
    command's runs, then the next's: a load spike from other work would otherwise land
    on one server only); every run's time from the rounds' JSON, pooled."""
    RAW.mkdir(parents=True, exist_ok=True)
    log(f"hyperfine: {op}")
    res.labels[op] = label
    samples: dict[str, list[float]] = {s: [] for s in SERVERS}
    order = list(SERVERS)
    try:
        for round_ in range(plan.rounds):
            argv = ["hyperfine", "-N", "--style", "none", "--warmup", str(plan.warmup),
                    "--runs", str(plan.runs // plan.rounds), "--export-json",
                    str(RAW / f"{op}.{round_}.json")]  # fmt: skip
            for server in order:
                argv += ["--command-name", server, commands[server]]
            for server in order if prepare else ():
                argv += ["--prepare", prepare[server]]  # type: ignore[index]
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                raise BenchError(f"hyperfine: {(done.stderr or done.stdout).strip()[-300:]}")
            for result in json.loads((RAW / f"{op}.{round_}.json").read_text())["results"]:
                samples[result["command"]] += result["times"]
            order.reverse()
        res.rows[op] = {s: Samples(samples[s]) for s in SERVERS}
    except BenchError as exc:
        res.rows[op] = {server: str(exc) for server in SERVERS}


def _virsh_rows(
    plan: Plan, res: ProtocolResults, uris: dict[str, str], xml: dict[str, Xml], one: str,
    root: Path,
) -> None:  # fmt: skip
    def each(command: str) -> dict[str, str]:
        return {s: f"virsh -c {uris[s]} {command.format(s=s)}" for s in SERVERS}

    _hyperfine_row(plan, res, "list", f"`virsh list --all`, {plan.vms} defined",
                   each("list --all"))  # fmt: skip
    _hyperfine_row(plan, res, "dominfo", "`virsh dominfo NAME`", each(f"dominfo {one}"))
    # define and undefine, each run after the other one put the VM back (hyperfine's
    # --prepare, untimed): the same VM defined and undefined over and over.
    name = f"{PREFIX}def"
    files = {}
    for server in SERVERS:
        files[server] = root / server / f"{name}.xml"
        files[server].write_text(xml[server](name))
    define = {s: f"virsh -c {uris[s]} define {files[s]}" for s in SERVERS}
    undefine = each(f"undefine {name}")
    for server in SERVERS:
        _virsh(uris[server], f"define {files[server]}")
    _hyperfine_row(plan, res, "define", "`virsh define FILE`", define, prepare=undefine)
    for server in SERVERS:
        _virsh(uris[server], f"undefine {name}", check=False)
    _hyperfine_row(plan, res, "undefine", "`virsh undefine NAME`", undefine, prepare=define)
    for server in SERVERS:
        _virsh(uris[server], f"undefine {name}", check=False)


def _python_row(plan: Plan, res: ProtocolResults, uris: dict[str, str], op: str) -> None:
    """Per-call times of one python3-libvirt call, rounds interleaved between servers."""
    log(f"python3-libvirt: {op}")
    res.labels[op] = f"python3-libvirt `{op}()`, one open connection, per call"
    samples: dict[str, list[float]] = {s: [] for s in SERVERS}
    errors: dict[str, str] = {}
    order = list(SERVERS)
    for _ in range(plan.rounds):
        for server in order:
            if server in errors:
                continue
            argv = ["/usr/bin/python3", "-c", CLIENT, uris[server], op, str(plan.calls),
                    str(plan.warmup)]  # fmt: skip
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            try:
                out = json.loads(done.stdout)
            except ValueError:
                out = {"error": (done.stderr or done.stdout).strip()[-300:]}
            if "error" in out:
                errors[server] = out["error"]
            else:
                samples[server] += out["times"]
        order.reverse()  # neither server always goes first
    res.rows[op] = {s: errors.get(s) or Samples(samples[s]) for s in SERVERS}


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
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "os": f"{distro}, Linux {platform.release()}",
        "load": _load(),
        "command": " ".join([".venv/bin/python", "bench/vs_libvirt_protocol.py", *sys.argv[1:]]),
    }


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _versions(lv: LibvirtStack, q: QumranStack) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True)
        return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"

    return {
        **q.versions(),
        **lv.versions(),
        "virsh": first_line(["virsh", "--version"]),
        "python3-libvirt": first_line(
            ["/usr/bin/python3", "-c", "import libvirt; print(libvirt.getVersion())"]
        ),
        "hyperfine": first_line(["hyperfine", "--version"]).split()[-1],
    }


def _notes(plan: Plan, res: ProtocolResults) -> None:
    raw = RAW.relative_to(REPO)
    res.notes += [
        "The client is the same for both servers, down to the URI's form: "
        "`qemu+unix:///system?socket=PATH`, qumrand's `libvirt-sock` and libvirtd's "
        f"`{LIBVIRTD_SOCKET}` (Debian 12's monolithic libvirtd, the system instance; started "
        "by hand with `libvirtd -d` when not running, as vs_libvirt.py does). "
        f"{plan.vms} VMs defined in each by `virsh define` (libvirtd: a q35 `qemu` domain "
        "with direct kernel boot, vs_libvirt.py's; qumrand: `qumran dumpxml`'s XML for the "
        "same machine), all shut off.",
        f"virsh rows: hyperfine without a shell, {plan.rounds} rounds of "
        f"{plan.runs // plan.rounds} runs per command (after {plan.warmup} warm-up runs each "
        "round), the servers' order swapped each round, every run's time pooled; a new virsh "
        "process each run "
        "(connect, handshake, call, close). `dominfo` of a shut-off VM; `define` of the "
        "server's XML file, each run after an untimed undefine (hyperfine's --prepare), "
        "`undefine` after an untimed define.",
        f"python3-libvirt rows: Debian's python3-libvirt in one process per round, one "
        f"connection, {plan.warmup} untimed calls then {plan.calls} timed ones "
        f"(time.perf_counter around each call); {plan.rounds} rounds per server, "
        "alternating which server goes first. `getAllDomainStats(0, 0)`: every stats group "
        "of every domain.",
        "Ratios and the target use the medians, robust to load spikes from other work on "
        "the machine (the load average before and after is in the header).",
        f"Raw hyperfine JSON, one file per round: `{raw}/*.json`.",
    ]


if __name__ == "__main__":
    sys.exit(main())
