"""Where an idle qumrand's memory goes: VmRSS as vs_libvirt.py measures it, split.

    .venv/bin/python bench/rss_idle.py [--driver fake|real] [--vms 100] [--web]

Reproduces vs_libvirt.py's memory conditions without libvirt: a private qumrand (the
machine's settings file, the libvirt protocol on, as the bench runs it), ``--vms``
defined VMs (the demo guest's definition), one of them running (real QEMU, or a stand-in
with ``--driver fake``), a few `list` and `dominfo` requests, then 3 s idle. Prints
VmRSS and its anonymous/file parts (/proc/PID/status), and the largest mappings from
/proc/PID/smaps (file-backed: shared libraries and extension modules; anonymous: heap).
qumrand runs in a network namespace of its own, so that nothing is made in the host's.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

import httpx

IDLE = 3.0


def status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status that describe memory."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith(("Vm", "Rss")) and value.strip().endswith("kB"):
                out[key] = int(value.split()[0])
    return out


def mappings(pid: int) -> dict[str, int]:
    """Rss (kB) of each mapped file (or [heap], [anon], [stack]) in /proc/PID/smaps."""
    sizes: dict[str, int] = collections.Counter()
    name = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:  # a mapping's header line
                name = fields[5] if len(fields) > 5 else "[anon]"
            elif fields[0] == "Rss:":
                sizes[name] += int(fields[1])
    return dict(sizes)


def measure(driver: str, count: int, web: bool) -> None:
    from qumran.images.demo import build_demo

    image = build_demo()
    root = tempfile.mkdtemp(prefix="qr", dir="/tmp")
    sock = f"{root}/s"
    ns = f"qrss{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    # RSS_DAEMON: how python starts qumrand (e.g. a wrapper script that dumps its modules)
    start = os.environ.get("RSS_DAEMON", "-m qumran.daemon.main").split()
    argv = [sys.executable, *start, "--driver", driver, "--socket", sock,
            "--state-dir", f"{root}/state", "--run-dir", f"{root}/run"]  # fmt: skip
    if web:
        argv.append("--web")
    with open(f"{root}/log", "wb") as log:
        daemon = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=log,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    try:
        for _ in range(300):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        api = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://q", timeout=60)
        for i in range(count):
            vm = {"name": f"qrss{i:04d}", "memory": "256M", "vcpus": 1,
                  "boot": {"kernel": str(image.kernel), "initrd": str(image.initrd),
                           "cmdline": image.cmdline}}  # fmt: skip
            api.post("/v1/vms", json=vm).raise_for_status()
        api.post(f"/v1/vms/qrss{count - 1:04d}/start").raise_for_status()
        for _ in range(3):
            api.get("/v1/vms").raise_for_status()
            api.get(f"/v1/vms/qrss{count // 2:04d}").raise_for_status()
        api.close()
        time.sleep(IDLE)
        show(daemon.pid)  # `ip netns exec` execs qumrand: the same pid
        if os.environ.get("RSS_DUMP"):  # signal the wrapper, give it seconds to write
            os.kill(daemon.pid, int(os.environ.get("RSS_SIG", "10")))
            time.sleep(float(os.environ["RSS_DUMP"]))
        api = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://q", timeout=60)
        api.post(f"/v1/vms/qrss{count - 1:04d}/destroy")
        api.close()
    finally:
        daemon.terminate()
        daemon.wait()
        subprocess.run(["ip", "netns", "delete", ns])


def show(pid: int) -> None:
    st = status(pid)
    mib = {k: v / 1024 for k, v in st.items()}
    print(f"VmRSS {mib['VmRSS']:.1f} MiB = anon {mib['RssAnon']:.1f} + file {mib['RssFile']:.1f}"
          f" + shmem {mib['RssShmem']:.1f}   (VmSize {mib['VmSize']:.0f} MiB)")  # fmt: skip
    maps = mappings(pid)
    so = sum(v for k, v in maps.items() if ".so" in k) / 1024
    print(f"  shared objects (.so): {so:.1f} MiB")
    for name, kb in sorted(maps.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {kb / 1024:6.2f} MiB  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--driver", default="real", choices=["real", "fake"])
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--web", action="store_true")
    args = parser.parse_args()
    measure(args.driver, args.vms, args.web)


if __name__ == "__main__":
    main()
