"""The Debian 12 image on qumran-vmm against QEMU q35 ``-accel kvm``, both through qumrand,
from the command to the first SSH command (inside the KVM test host).

    python -m tests.kvmhost run --cpus 1 --timeout 3400 --memory 5120 --cwd "$PWD" -- \\
        "$PWD/.venv/bin/python" bench/vmm_debian.py [--runs N] [--only native|qemu]

Each run, for each hypervisor in turn (the order rotating): ``qumran create NAME --image
debian-12 --hypervisor HV --memory 768M --disk-size 2G --ssh-key KEY.pub`` until the
guest's sshd sends its banner through the forward, then until ``qumran ssh NAME -- true``
first gets in (the first boot: cloud-init makes the user and installs the key); then
``qumran shutdown`` (waiting until it is off) and ``qumran start``, timed the same way
(a second boot of the same disk, cloud-init's work done). The banner is checked
in-process, a probe a second held until the forwarder ends it (bench/vslib/banner.py: a
probe that hangs up first makes Debian 12's passt spin), and ssh tried once a second, so
the waiting costs the nested guest little CPU in the test host; a VM that is no longer
running ends the wait with its logs.

The VM is what ``qumran create`` defines for each: qumran-vmm, having no firmware, boots
the image's own kernel and initrd; QEMU boots the disk through its firmware (SeaBIOS,
then GRUB). The disk is a qcow2 overlay volume (QEMU opens it itself; qumran-vmm through
qemu-storage-daemon over vhost-user-blk), the cloud-init seed a read-only second disk,
a user NIC with SSH forwarded (QEMU's slirp; passt for qumran-vmm).

Memory, read when the second boot's ssh got in: the VMM's resident set minus the resident
part of its guest-RAM mapping (as bench/vmm_boot.py); its anonymous memory (what each
more VM costs again: the shared text left out), guest RAM left out the same way; and the
helper processes each VM has beside it (qumran-vmm: qemu-storage-daemon and passt; QEMU
has both inside), their shared guest RAM left out the same way. Prints markdown;
measures, never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmm_boot import Mapping, guest_ram_rss, is_guest_ram, mappings, vm_rss
from vslib.banner import wait_for_banner
from vslib.cleanup import interrupt
from vslib.create_qumran import QumranCreate
from vslib.guest import forwarded_port
from vslib.measure import BenchError, cpu_seconds, now, thread_cpu_seconds
from vslib.procs import helpers_of, until_success
from vslib.qumran_stack import QumranStack

HYPERVISORS = ("native", "qemu")
LABEL = {"native": "qumran-vmm", "qemu": "QEMU q35"}
MEMORY_MIB = 768
BOOT_TIMEOUT = 1200.0  # a first boot with cloud-init, nested under TCG: 5-10 min seen


def log(message: str) -> None:
    print(f"[vmm_debian {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def image_cache() -> Path:
    """The XDG_CACHE_HOME holding a built debian-12 image: inside the test host, the host
    user's ~/.cache (read-only there, which an overlay's backing file may be)."""
    from qumran.images.cache import ImageStore

    bases = [Path(os.environ["XDG_CACHE_HOME"])] if os.environ.get("XDG_CACHE_HOME") else []
    bases.append(Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache")
    for base in bases:
        found = ImageStore(base / "qumran" / "images").find("debian-12")
        if found is not None and found.kernel is not None:
            return base
    raise BenchError("no debian-12 image with its kernel: `qumran image build debian-12`")


def helpers(q: QumranStack, pid: int, port: int) -> dict[int, str]:
    """The VM's helper processes: qemu-storage-daemon (its sockets are in a folder named
    as the VM's run folder) and passt (its forward of ``port``)."""
    markers = [f"/{q._console_log(pid).parent.name}/".encode(), f"/{port}:".encode()]
    return helpers_of(pid, markers)


def memory(q: QumranStack, pid: int, port: int) -> dict[str, float]:
    """The VMM's overhead, and its helpers'."""
    mem_kib = MEMORY_MIB * 1024
    maps = mappings(pid)
    own = [m for m in maps if not is_guest_ram(m.size, mem_kib)]
    out = {"vmm_mib": (vm_rss(pid) - guest_ram_rss(pid, mem_kib, maps)) / 1024,
           "vmm_anon_mib": anonymous_kib(own) / 1024}  # fmt: skip
    log(f"    VMM resident, KiB: {rss_by_mapping(own)}")
    helpers_mib = 0.0
    for hpid, name in helpers(q, pid, port).items():
        try:
            helper = (vm_rss(hpid) - guest_ram_rss(hpid, mem_kib)) / 1024
        except OSError:
            continue
        out[f"{name}_mib"] = out.get(f"{name}_mib", 0.0) + helper
        helpers_mib += helper
    out["with_helpers_mib"] = out["vmm_mib"] + helpers_mib
    return out


def anonymous_kib(maps: list[Mapping]) -> int:
    """The anonymous memory of ``maps`` (the VMM's, guest RAM left out): its heap, stacks
    and the pages of its files it wrote to, what each more VM costs again. The binary's
    and the libraries' text that RSS also counts is shared by every process running them:
    by each QEMU with the others, by qumran-vmm with qumrand and every other python3.11."""
    return sum(m.anonymous for m in maps)


def rss_by_mapping(maps: list[Mapping], top: int = 10) -> list[tuple[str, int]]:
    """Where the VMM's resident set is (``maps``, guest RAM left out): KiB per mapped file
    (its base name) or kind of anonymous mapping ([heap], [stack], [anon]), the largest
    first."""
    by: dict[str, int] = {}
    for m in maps:
        by[m.name] = by.get(m.name, 0) + m.rss
    return sorted(by.items(), key=lambda item: -item[1])[:top]


def vcpu_threads(pid: int) -> tuple[list[int], list[int]]:
    """``pid``'s threads: its vCPU threads (named "CPU N/KVM", by qumran-vmm as by QEMU)
    and the others."""
    vcpus: list[int] = []
    others: list[int] = []
    for task in os.scandir(f"/proc/{pid}/task"):
        try:
            with open(f"{task.path}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        is_vcpu = comm.startswith("CPU ") and comm.endswith("/KVM")
        (vcpus if is_vcpu else others).append(int(task.name))
    return vcpus, others


def cpu(q: QumranStack, name: str, port: int) -> dict[str, float]:
    """Where the CPU of the boot went, at its first SSH command: the guest's vCPUs, the
    VMM's other threads (device emulation, I/O), and each helper process. On the test
    host's one CPU, all of it comes out of the same second."""
    pid = vm_pid(q, name)
    vcpus, others = vcpu_threads(pid)
    out = {"vcpu_s": thread_cpu_seconds(pid, vcpus),
           "vmm_other_s": thread_cpu_seconds(pid, others)}  # fmt: skip
    for hpid, helper in helpers(q, pid, port).items():
        out[f"{helper}_s"] = out.get(f"{helper}_s", 0.0) + cpu_seconds([hpid])
    return out


def vm_info(q: QumranStack, name: str) -> dict[str, object]:
    done = subprocess.run([q.cli, "--json", "dominfo", name], env=q.env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"dominfo {name}: {done.stderr.strip()}")
    info: dict[str, object] = json.loads(done.stdout)
    return info


def vm_pid(q: QumranStack, name: str) -> int:
    return int(str(vm_info(q, name)["pid"]))


def ssh_banner(q: QumranStack, name: str, port: int, deadline: float) -> float:
    """When the guest's sshd first sends its banner through the forward (:func:`now`),
    checked in this process by :func:`vslib.banner.wait_for_banner`: a probe a second,
    each held until the forwarder ends it, so that passt is never made to spin (and
    ``qumran ssh`` tries, a Python start and an ssh each, would take the nested guest's
    CPU from it in the test host). A VM that is no longer running ends the wait with its
    logs."""

    def still_running() -> None:
        state = vm_info(q, name).get("state")
        if state != "running":
            raise BenchError(f"VM {name} is {state}, no SSH banner came{vm_logs(q, name)}")

    try:
        return wait_for_banner(port, deadline, check=still_running)
    except TimeoutError as exc:
        raise BenchError(f"{exc}{vm_logs(q, name)}") from None


def vm_logs(q: QumranStack, name: str) -> str:
    """The ends of the VM's console and hypervisor logs, for a failure's message."""
    uuid = str(vm_info(q, name).get("uuid", ""))
    text = ""
    for path in sorted((q.root / "run" / "vms" / uuid[:13]).glob("*.log")) if uuid else []:
        with contextlib.suppress(OSError):
            text += f"\n--- {path.name}:\n{path.read_text(errors='replace')[-3000:]}"
    return text


def boot_to_ssh(
    creator: QumranCreate, argv: list[str], name: str, port: int | None = None
) -> dict[str, float]:
    """Run ``argv`` (create or start); seconds to the SSH banner and to a ``qumran ssh``
    that gets in (key and host key checked: a user's first command)."""
    t0 = now()
    deadline = t0 + BOOT_TIMEOUT
    done = subprocess.run(argv, env=creator.env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[1:3])}: {done.stderr.strip()[-600:]}")
    for line in done.stdout.splitlines():
        log(f"  {argv[1]}: {line}")
        port = forwarded_port(line) or port
    if port is None:
        raise BenchError(f"{argv[1]} {name} named no SSH forward: {done.stdout[-600:]}")
    banner = ssh_banner(creator.q, name, port, deadline)
    tries, _ = until_success(creator.ssh_argv(name), deadline, 1.0, creator.env)
    result = {"banner": banner - t0, "ssh": now() - t0, "tries": float(tries), "port": port}
    log(f"    CPU: {cpu(creator.q, name, port)}")
    log_boot_breakdown(creator, name)
    return result


def log_boot_breakdown(creator: QumranCreate, name: str) -> None:
    """Where the guest says its boot went (``systemd-analyze``: kernel, initrd, user space,
    and the slowest units; its clocksource; the kernel log's longest silences), logged
    after the timing is taken, to compare the two stacks' boots stage by stage."""
    # systemd-analyze answers only once the boot has finished (cloud-init's last stage
    # may still run when SSH first answers): wait for that first.
    command = ("timeout 600 systemctl is-system-running --wait; systemd-analyze; "
               "systemd-analyze blame --no-pager | head -n 12; "
               "cat /sys/devices/system/clocksource/clocksource0/current_clocksource; "
               # the kernel log's longest silences: a timeout one stack's machine causes
               "sudo dmesg | awk -F'[][]' '{t=$2+0; if (t-p>0.5) printf \"%.1fs gap: %s\\n\", "
               "t-p, $0; p=t}' | sort -rn | head -n 8")  # fmt: skip
    argv = [*creator.ssh_argv(name)[:-1], command]
    done = subprocess.run(argv, env=creator.env, capture_output=True, text=True, timeout=700)
    for line in (done.stdout + done.stderr).splitlines():
        log(f"    guest: {line.strip()}")


def shut_down(q: QumranStack, name: str, timeout: float = 600) -> None:
    """``qumran shutdown`` and wait until the guest has powered off. Not ``destroy``: a
    guest killed seconds after its first boot loses what it had not written back (the
    SSH host keys cloud-init had just made: sshd then failed at every later boot)."""
    subprocess.run([q.cli, "shutdown", name], env=q.env, capture_output=True, timeout=120,
                   check=True)  # fmt: skip
    deadline = now() + timeout
    while vm_info(q, name).get("state") != "shutoff":
        if now() > deadline:
            raise BenchError(f"VM {name} did not power off in {timeout:.0f} s")
        time.sleep(2.0)


def one_run(q: QumranStack, creator: QumranCreate, name: str) -> dict[str, float]:
    first = boot_to_ssh(creator, creator.create_argv(name), name)
    result = {"first_banner": first["banner"], "first_ssh": first["ssh"]}
    shut_down(q, name)
    second = boot_to_ssh(creator, [q.cli, "start", name], name, int(first["port"]))
    result.update(second_banner=second["banner"], second_ssh=second["ssh"])
    result.update(memory(q, vm_pid(q, name), int(first["port"])))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--only", choices=HYPERVISORS)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)  # a timeout's SIGTERM cleans up as Ctrl-C does
    for tool in ("passt", "qemu-storage-daemon", "ssh", "ssh-keygen", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            raise SystemExit(f"vmm_debian: needs {tool}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # the forwards listen there
    root = Path(tempfile.mkdtemp(prefix="qd", dir="/tmp"))
    root.chmod(0o755)
    q = QumranStack(root, Path(sys.executable).parent, Path("/"), Path("/"), "")
    env = {**q.env, "XDG_CACHE_HOME": str(image_cache()), "XDG_DATA_HOME": str(root / "data")}
    key = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    chosen = [args.only] if args.only else list(HYPERVISORS)
    results: dict[str, list[dict[str, float]]] = {hv: [] for hv in chosen}
    failures: dict[str, int] = {}
    q.compile()
    q.start_daemon(timeout=180)
    try:
        for run in range(args.runs):
            order = chosen[run % len(chosen) :] + chosen[: run % len(chosen)]
            for hv in order:
                name = f"deb{hv[0]}{run}"
                size = ("--hypervisor", hv, "--memory", f"{MEMORY_MIB}M", "--disk-size", "2G")
                creator = QumranCreate(q, env, key, create_args=size)
                log(f"run {run + 1}: {LABEL[hv]}")
                try:
                    got = one_run(q, creator, name)
                except BenchError as exc:  # one VM's failure is a result too: go on
                    log(f"  {LABEL[hv]} failed: {exc}")
                    failures[hv] = failures.get(hv, 0) + 1
                    continue
                finally:
                    creator.remove(name)
                log(f"  {got}")
                results[hv].append(got)
    finally:
        q.stop()
        shutil.rmtree(root, ignore_errors=True)
    report(results)
    for hv, n in failures.items():
        print(f"- {LABEL[hv]}: {n} of {args.runs} run(s) failed (logged above)")
    return 1 if failures else 0


def report(results: dict[str, list[dict[str, float]]]) -> None:
    rows = [("command → SSH banner, first boot (cloud-init), s", "first_banner"),
            ("command → first SSH command, first boot, s", "first_ssh"),
            ("command → SSH banner, second boot, s", "second_banner"),
            ("command → first SSH command, second boot, s", "second_ssh"),
            ("VMM overhead (RSS - guest RAM), MiB", "vmm_mib"),
            ("VMM anonymous memory (guest RAM left out), MiB", "vmm_anon_mib"),
            ("with its helper processes, MiB", "with_helpers_mib")]  # fmt: skip
    hvs = list(results)
    pair = len(hvs) == 2
    print("| measure | " + " | ".join(LABEL[h] for h in hvs) + (" | ratio |" if pair else " |"))
    print("|---" * (len(hvs) + 1 + pair) + "|")
    for label, key in rows:
        values = [[r[key] for r in results[h]] for h in hvs]
        cells = [f"{statistics.median(v):.1f} ({min(v):.1f} to {max(v):.1f})" if v else "-"
                 for v in values]  # fmt: skip
        ratio = ""
        if pair and values[0] and values[1]:
            ratio = f" {statistics.median(values[0]) / statistics.median(values[1]):.2f} |"
        print(f"| {label} | " + " | ".join(cells) + (" |" + ratio if ratio else " |"))
    for h in hvs:
        for r in results[h]:
            print(f"- {LABEL[h]}: " + "; ".join(f"{k} {v:.2f}" for k, v in r.items()))


if __name__ == "__main__":
    raise SystemExit(main())
