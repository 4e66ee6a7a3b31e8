"""From the command to the first SSH command: ``qumran create`` against ``virt-install``.

    PYTHONPATH=src .venv/bin/python bench/vs_create.py [--quick] [--write] [--only STACK]

The same Debian 12 image (``qumran image build debian-12``, copied once to a folder
libvirt's QEMU can read; both stacks use that one copy as their overlay's backing file),
1 GiB, 2 vCPUs, an 8 GiB qcow2 overlay, the same cloud-init user-data (user ``debian``
with a key made for the run, password-less sudo, the VM's name as host name), q35 under
TCG, user-mode networking with SSH forwarded from a loopback port. Median of 5 runs per
stack (after one unmeasured run each), the stacks interleaved in turn. The table goes to
stdout and, for a full run (or with --write), into BENCHMARKS.md between its vs_create
markers. Benchmarks measure; they never assert. Every VM, domain, volume and file a run
makes is removed again, on Ctrl-C too. Run as root (the system libvirtd).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from vslib.cleanup import interrupt, quietly
from vslib.create_libvirt import LibvirtCreate
from vslib.create_qumran import QumranCreate
from vslib.create_report import BEGIN, END, STACKS, CreateResults, render, write_between
from vslib.libvirt_stack import LibvirtStack
from vslib.measure import BenchError, ensure_commands, run
from vslib.qumran_stack import QumranStack

REPO = Path(__file__).resolve().parents[1]
PREFIX = "qbc"  # every VM and domain this benchmark makes starts with it
IMAGE = "debian-12"
SETTLE = 2.0  # seconds of quiet between two runs


def log(message: str) -> None:
    print(f"[vs_create {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run per stack, no warm-up")
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md after --quick")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per stack")
    parser.add_argument("--only", choices=STACKS, help="measure one stack")
    parser.add_argument(
        "--probe", action="store_true",
        help="also time, not count, when a plain ssh first gets into qumran's guest",
    )  # fmt: skip
    args = parser.parse_args(argv)
    runs, warmup = (1, 0) if args.quick else (args.runs, 1)
    stacks = [args.only] if args.only else list(STACKS)
    if os.geteuid() != 0:
        print("vs_create: run as root (it uses the system libvirtd)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    res = CreateResults()
    cleanup = contextlib.ExitStack()
    try:
        measure(res, cleanup, stacks, runs, warmup, args.probe)
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
    res.meta["mode"] = (
        f"{'quick run' if args.quick else 'full run'}, {runs} measured run(s) per stack "
        f"after {warmup} unmeasured"
    )
    section = render(res)
    print(section)
    if (not args.quick and not args.only and not args.probe) or args.write:
        write_between(REPO / "BENCHMARKS.md", BEGIN, END, section)
        log("wrote BENCHMARKS.md")
    return 0


def measure(
    res: CreateResults, cleanup: contextlib.ExitStack, stacks: list[str], runs: int, warmup: int,
    probe: bool = False,
) -> None:  # fmt: skip
    res.meta.update(_machine())
    ensure_commands({
        "virt-install": "virtinst", "xorrisofs": "xorriso", "qemu-img": "qemu-utils",
        "ssh": "openssh-client", "ssh-keygen": "openssh-client",
        "qemu-system-x86_64": "qemu-system-x86",
    })  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="qvc", dir="/tmp"))  # short: UNIX socket paths
    cleanup.callback(quietly("removing " + str(root), lambda: shutil.rmtree(root), log))
    root.chmod(0o755)  # libvirt's QEMU runs as libvirt-qemu and must reach the image
    cache = root / "cache"
    image_disk = _copy_image(cache / "qumran" / "images")
    key = root / "key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vs_create", "-f", str(key)])
    makers: dict[str, Callable[[str], dict[str, float]]] = {}
    removers: dict[str, Callable[[str], None]] = {}
    if "libvirt" in stacks:
        lv = LibvirtStack(root / "libvirt", image_disk, image_disk, "")
        log("libvirt: checking packages and daemons")
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
        (root / "libvirt").mkdir(mode=0o755)
        lc = LibvirtCreate(lv, root / "libvirt", image_disk, key)
        makers["libvirt"], removers["libvirt"] = lc.create_to_ssh, lc.remove
        res.versions.update(lv.versions())
        res.versions["virt-install"] = run(["virt-install", "--version"]).strip()
    if "qumran" in stacks:
        q = QumranStack(root / "qumran", Path(sys.executable).parent, image_disk, image_disk, "")
        cleanup.callback(quietly("stopping qumrand", q.stop, log))
        log("qumran: starting qumrand")
        q.compile()
        q.start_daemon()
        env = {
            **q.env,
            "XDG_CACHE_HOME": str(cache),  # the image copy, as `qumran image list` shows it
            "XDG_DATA_HOME": str(root / "qumran" / "data"),  # known_hosts of the run
        }
        qc = QumranCreate(q, env, key, probe)
        makers["qumran"], removers["qumran"] = qc.create_to_ssh, qc.remove
        res.versions.update(q.versions())
    res.versions["QEMU"] = run(["qemu-system-x86_64", "--version"]).split("version")[-1].split()[0]
    res.versions["Python"] = platform.python_version()
    res.runs = {stack: [] for stack in stacks}
    order = list(stacks)
    for round_ in range(warmup + runs):
        order = order[1:] + order[:1]  # rotate, so no stack always goes first
        for stack in order:
            if stack in res.errors:
                continue
            name = f"{PREFIX}{round_}{stack[0]}"
            try:
                times = makers[stack](name)
            except Exception as exc:  # record and go on: one broken stack spoils no other
                res.errors[stack] = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
                log(f"{stack}: {name} failed: {res.errors[stack]}")
                continue
            finally:
                quietly(f"removing {name}", functools.partial(removers[stack], name), log)()
                time.sleep(SETTLE)
            what = "warm-up" if round_ < warmup else f"run {round_ - warmup + 1}/{runs}"
            log(f"{stack} {what}: " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))
            if round_ >= warmup:
                res.runs[stack].append(times)
    res.meta["load"] += f" → {_load()} (before → after)"
    _notes(res, runs, warmup)


def _copy_image(images: Path) -> Path:
    """The cached image's entry copied under ``images`` (readable by all); its disk."""
    from qumran.images.cache import ImageStore

    image = ImageStore().find(IMAGE)
    if image is None:
        log(f"building {IMAGE} (qumran image build {IMAGE}; minutes the first time)")
        cli = Path(sys.executable).parent / "qumran"
        subprocess.run([str(cli), "image", "build", IMAGE], check=True)
        image = ImageStore().get(IMAGE)
    target = images / IMAGE
    shutil.copytree(image.path, target)
    for folder in (target, *target.parents):
        if folder == Path("/tmp"):
            break
        folder.chmod(0o755)
    for child in target.iterdir():
        child.chmod(0o644)
    return target / image.info.disk


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
        "command": " ".join(["PYTHONPATH=src .venv/bin/python bench/vs_create.py", *sys.argv[1:]]),
    }


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _notes(res: CreateResults, runs: int, warmup: int) -> None:
    res.notes += [
        f"{runs} measured runs per stack after {warmup} unmeasured, the stacks taking turns "
        "(the order rotating each round), a new VM each run, removed (domain or VM, disk, "
        "seed) before the next; medians and (min to max).",
        "qumran: from running `qumran create NAME --image debian-12 --memory 1G --vcpus 2 "
        "--disk-size 8G --ssh-key KEY.pub` until `qumran ssh NAME -i KEY -- true` "
        "first succeeds (tried every 0.25 s, as the libvirt side tries), against a private qumrand "
        "(QEMU driver) of the same tree. create makes a qcow2 overlay volume on the image, "
        "defines the VM with a `cloud_init` section and a user NIC forwarding a free loopback "
        "port to port 22, starts it (qumrand builds the NoCloud seed with pycdlib and hands "
        "it to QEMU as a read-only virtio-blk disk, with the guest's SSH host key qumrand made "
        "at define) and returns; `qumran ssh` checks the guest against that key, known before "
        "the boot. Phases: create's own lines, timestamped as they arrive.",
        "libvirt: from running `qemu-img create -f qcow2 -b IMAGE` (8G overlay), then the "
        "seed (user-data and meta-data written, `xorrisofs -J -rational-rock -V cidata`, the "
        "command virt-install --cloud-init runs), then `virt-install --import --osinfo "
        "detect=on,require=off --virt-type qemu --machine q35 --cpu mode=maximum --memory "
        "1024 --vcpus 2 --disk overlay,bus=virtio --disk seed.iso,bus=virtio,readonly=on "
        "--serial file --graphics none --network none --noautoconsole` with `--controller "
        "usb,model=none --controller num_pcie_root_ports=0 --memballoon none` (Qumran's "
        "machine has no USB, balloon or spare root ports) and `--qemu-commandline '-netdev "
        "user,id=net0,hostfwd=tcp:127.0.0.1:PORT-:22 -device virtio-net-pci,...'` (the same "
        "slirp NIC as Qumran's; libvirt's `<interface type='user'>` has no port forwards), "
        "until `ssh -o StrictHostKeyChecking=no -p PORT debian@127.0.0.1 true` first "
        "succeeds (tried every 0.25 s). Not `virt-install --cloud-init`: it puts the seed on "
        "a CD-ROM, which on q35 is SATA (AHCI), and Debian's cloud kernel in this image has "
        "no AHCI driver, so the guest never sees it (tried: `seed=dmi`, no user, no login).",
        "The same user-data both ways: user `debian`, the run's ed25519 key, `lock_passwd: "
        "true`, `sudo: ALL=(ALL) NOPASSWD:ALL`, `ssh_pwauth: false`, and the guest's ed25519 "
        "host key made beforehand (`ssh_keys`, `ssh_genkeytypes: []`: qumrand makes one per "
        "VM; the libvirt side makes one per run the same way); meta-data with the VM's "
        "name as host name. The same image file backs both overlays: the cached image's "
        "entry copied once into the run's folder (readable by libvirt-qemu), and given to "
        "qumran as its image cache (XDG_CACHE_HOME).",
        "Console phases: the serial console file of each stack (qumrand's console.log, "
        "libvirt's `<serial type='file'>`), polled every 5 ms by the same watcher: the first "
        "whole line, the getty's `login:` prompt, cloud-init's `finished at` line.",
        "CPU: utime + stime from /proc (10 ms ticks) of qumrand, or libvirtd + virtlogd, "
        "between the command and the successful SSH; the clients' own CPU from wait4 "
        "(qumran create and every `qumran ssh` with its ssh; qemu-img, xorrisofs, "
        "virt-install and every ssh); QEMU's at the successful SSH.",
    ]


if __name__ == "__main__":
    sys.exit(main())
