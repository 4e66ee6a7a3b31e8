"""Which system calls each qumran-vmm thread makes: the source of its seccomp allow-lists
(src/qumran/vmm/syscalls.py). Run inside the KVM test host, where the demo guest boots:

    python -m tests.kvmhost run --timeout 1500 --cwd "$PWD" -- \\
        "$PWD/.venv/bin/python" bench/vmm_syscalls.py [--vcpus 3] [--vhost-user]

Runs qumran-vmm with its confinement off (QUMRAN_VMM_SECCOMP=off) under ``strace -ff`` (one
file per thread) through the paths a guest drives: boot with 3 vCPUs, a disk written and
read with O_DIRECT and fsync, virtio-rng, the network on passt (DHCP, a TCP transfer in
through a forward and out through the gateway), the control socket (status, pause,
resume), a guest reboot (every vCPU and device thread made anew), and power-off; with
``--vhost-user``, a second disk (/dev/vdb) is a qcow2 served by qemu-storage-daemon, written
and read too (its rings handed over and taken back by the vCPU threads). The
threads are told apart by their names (/proc/PID/task/TID/comm, read while they run).
Prints, per role, the sorted system call names as Python tuples to paste.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmm_passt import LoneNetns
from vmm_virtio import QUMRAN_VMM, Guest, find_demo
from vslib.vmm_control import ask

ROLES = (("CPU ", "vcpu"), ("virtio-io", "io"), ("virtio-blk-io", "blk"))
_CALL = re.compile(r"^(?:\d+\s+)?(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)")


def role_of(comm: str, vm_name: str) -> str:
    for prefix, role in ROLES:
        if comm.startswith(prefix):
            return role
    return "main" if comm == vm_name[:15] else f"other:{comm}"


def snapshot(pid: int, vm_name: str, roles: dict[int, str]) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        roles.setdefault(int(tid), role_of(comm, vm_name))


def drive(guest: Guest, ready: str, ctl: Path, pid: int, roles: dict[int, str],
          disks: tuple[str, ...] = ("vda",)) -> None:  # fmt: skip
    guest.wait_for(ready, 600)
    snapshot(pid, "trace", roles)
    for d in disks:
        guest.run(f"dd if=/dev/zero of=/dev/{d} bs=64k count=64 oflag=direct conv=fsync 2>&1", 300)
        guest.run(f"dd if=/dev/{d} of=/dev/null bs=4k count=256 iflag=direct 2>&1", 300)
    guest.run("head -c 4096 /dev/hwrng | wc -c", 120)
    guest.run("ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0;"
              " ip route add default via 10.0.2.2", 60)  # fmt: skip
    guest.run("udhcpc -i eth0 -n -q -f -s /bin/true 2>&1 | tail -2", 120)
    for cmd in ("status", "pause", "resume", "stats"):
        ask(ctl, cmd)
    guest.run("head -c 2000000 /dev/zero | nc 10.0.2.2 5001", 300)
    snapshot(pid, "trace", roles)
    since = len(guest.out)
    _type(guest, "reboot -f\n")
    guest.wait_for(ready, 600, since)
    snapshot(pid, "trace", roles)
    for d in disks:
        guest.run(f"dd if=/dev/{d} of=/dev/null bs=4k count=64 iflag=direct 2>&1", 300)
    snapshot(pid, "trace", roles)
    _type(guest, "poweroff -f\n")
    guest.proc.wait(300)


def _type(guest: Guest, text: str) -> None:
    assert guest.proc.stdin is not None
    guest.proc.stdin.write(text.encode())
    guest.proc.stdin.flush()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--vcpus", type=int, default=3)
    p.add_argument("--vhost-user", action="store_true", help="a qcow2 disk, storage daemon")
    args = p.parse_args()
    demo = find_demo()
    with tempfile.TemporaryDirectory(prefix="qsys-") as tmp:
        work = Path(tmp)
        disk = work / "disk.img"
        disk.write_bytes(bytes(16 << 20))
        ctl = work / "ctl.sock"
        net = LoneNetns()  # passt needs a default route; nothing is sent along it
        sink = subprocess.Popen(net.wrap([sys.executable, "-c", _SINK]))  # the far end
        argv = ["strace", "-ff", "-qq", "-o", str(work / "t"), QUMRAN_VMM, "--name", "trace",
                "--kernel", str(demo.kernel), "--initrd", str(demo.initrd),
                "--cmdline", demo.cmdline, "--vcpus", str(args.vcpus), "--memory", "256M",
                "--control", str(ctl), "--disk", str(disk), "--rng",
                "--net", "passt,forward=tcp:127.0.0.1:2222-:22"]  # fmt: skip
        storage = _storage_daemon(work) if args.vhost_user else None
        if storage is not None:
            argv += ["--disk", f"vhost-user={work / 'qcow2.sock'}"]
        guest = _guest_with_env(net.wrap(argv), {"QUMRAN_VMM_SECCOMP": "off"})
        roles: dict[int, str] = {}
        try:
            vmm = _vmm_pid(guest.proc.pid)
            disks = ("vda", "vdb") if storage is not None else ("vda",)
            drive(guest, demo.ready_line, ctl, vmm, roles, disks)
        finally:
            guest.close()
            if storage is not None:
                storage.kill()
            sink.kill()
            net.close()
        calls: dict[str, set[str]] = collections.defaultdict(set)
        for trace in work.glob("t.*"):
            role = roles.get(int(trace.suffix[1:]))
            if role is None:
                continue  # passt, or a thread that came and went unseen
            for line in trace.read_text(errors="replace").splitlines():
                m = _CALL.match(line)
                if m:
                    calls[role].add(m.group(1))
    for role in sorted(calls):
        names = ", ".join(f'"{n}"' for n in sorted(calls[role]))
        print(f"{role.upper()} = ({names})  # {len(calls[role])}")
    return 0


def _storage_daemon(work: Path) -> subprocess.Popen[bytes]:
    """qemu-storage-daemon serving a fresh qcow2 on ``work/qcow2.sock``, once it listens."""
    image, sock = work / "disk.qcow2", work / "qcow2.sock"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    proc = subprocess.Popen(["qemu-storage-daemon",
        "--blockdev", f"driver=file,node-name=file0,filename={image}",
        "--blockdev", "driver=qcow2,node-name=disk0,file=file0",
        "--export", f"type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,"
                    f"addr.path={sock},writable=on"])  # fmt: skip
    deadline = time.monotonic() + 60
    while not sock.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("qemu-storage-daemon did not start")
        time.sleep(0.1)
    return proc


def _vmm_pid(strace: int) -> int:
    """strace's child once it is qumran-vmm (its main thread named after the VM)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{strace}/task/{strace}/children").read_text().split():
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "trace":
                    return int(child)
            except OSError:
                continue
        time.sleep(0.2)
    raise SystemExit("qumran-vmm did not start under strace")


def _guest_with_env(argv: list[str], env: dict[str, str]) -> Guest:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        return Guest(argv)
    finally:
        os.environ.clear()
        os.environ.update(old)


_SINK = """
import socket
srv = socket.create_server(("127.0.0.1", 5001))
while True:
    conn, _ = srv.accept()
    while conn.recv(1 << 20):
        pass
    conn.close()
"""


if __name__ == "__main__":
    sys.exit(main())
