"""qumrand's own CPU while idle with N running stand-in VMs (the fake driver).

    .venv/bin/python bench/idle_fake.py 10

Starts a private qumrand (--driver fake, no settings file), defines and starts N VMs,
waits 65 s (past the first slow statistics sample), then reads qumrand's utime + stime
from /proc over 60 s with nothing asked of it. The VMs' own processes do not count.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import httpx


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def main(count: int, settle: float = 65.0, window: float = 60.0) -> None:
    root = tempfile.mkdtemp(prefix="qi", dir="/tmp")
    sock = f"{root}/s"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "qumran.daemon.main", "--no-config", "--driver", "fake",
         "--socket", sock, "--state-dir", f"{root}/state", "--run-dir", f"{root}/run"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.1)
        api = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://q", timeout=30)
        for i in range(count):
            vm = {"name": f"v{i}", "memory": 64, "boot": {"kernel": "/bin/sh"}}
            api.post("/v1/vms", json=vm).raise_for_status()
            api.post(f"/v1/vms/v{i}/start").raise_for_status()
        time.sleep(settle)
        before, began = cpu_ticks(daemon.pid), time.monotonic()
        time.sleep(window)
        ticks, took = cpu_ticks(daemon.pid) - before, time.monotonic() - began
        share = ticks / os.sysconf("SC_CLK_TCK") / took * 100
        print(f"{count} VMs: {ticks} ticks in {took:.0f} s => {share:.3f} % of a CPU")
        for i in range(count):
            api.post(f"/v1/vms/v{i}/destroy")
    finally:
        daemon.terminate()
        daemon.wait()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
