"""The Qumran side of ``bench/vs_create.py``: ``qumran create`` then ``qumran ssh``.

One run, timed from running ``qumran create NAME --image debian-12 --memory 1G --vcpus 2
--disk-size 8G --ssh-key KEY.pub`` to the first ``qumran ssh NAME -i KEY -- true`` that
succeeds, tried every 0.25 s as the libvirt side tries its ssh: the guest's host key is
qumrand's, known before the boot, so ssh gets in as soon as sshd answers (``--wait``,
until cloud-init's last stage, is what a person waits with; it is not what this times).
Each line create prints is timestamped as it arrives, which gives its phases; the console
log qumrand keeps gives the boot's.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from pathlib import Path

from vslib.consolewatch import ConsoleWatch
from vslib.guest import create_step, forwarded_port
from vslib.measure import BenchError, cpu_seconds, now
from vslib.procs import reap, start, until_success
from vslib.qumran_stack import QumranStack

SSH_POLL = 0.25  # seconds between two `qumran ssh` attempts, as on the libvirt side
CREATE_ARGS = ("--memory", "1G", "--vcpus", "2", "--disk-size", "8G")


class QumranCreate:
    def __init__(
        self, q: QumranStack, env: dict[str, str], key: Path, probe: bool = False,
        create_args: tuple[str, ...] = CREATE_ARGS,
    ) -> None:  # fmt: skip
        self.q = q
        self.create_args = create_args  # the VM's size (and hypervisor), after --image
        # Also try a plain ssh (host key unchecked, as on the libvirt side) from the moment
        # the port is known: when the guest would first have let a user in. Not counted.
        self.probe = probe
        self.env = env  # the CLI's: QUMRAN_SOCKET, and XDG dirs holding the image copy
        self.key = key

    def create_argv(self, name: str) -> list[str]:
        return [self.q.cli, "create", name, "--image", "debian-12", *self.create_args,
                "--ssh-key", f"{self.key}.pub"]  # fmt: skip

    def create_to_ssh(self, name: str, timeout: float = 900) -> dict[str, float]:
        cpu0 = cpu_seconds([self.q.pid])
        t0 = now()
        deadline = t0 + timeout
        proc = start(self.create_argv(name), self.env)
        steps: dict[str, float] = {}
        lines: list[str] = []
        watch: ConsoleWatch | None = None
        qemu_pid = 0
        probed: dict[str, float] = {}
        prober: threading.Thread | None = None
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:  # create flushes each line as it prints it
                seen = now()
                line = raw.decode(errors="replace").rstrip("\n")
                lines.append(line)
                step = create_step(line)
                if step is None:
                    continue
                phase, pid = step
                port = forwarded_port(line)
                if self.probe and port is not None:
                    prober = threading.Thread(
                        target=self._probe, args=(port, t0, deadline, probed), daemon=True
                    )
                    prober.start()
                steps.setdefault(phase, seen - t0)
                if pid is not None:
                    qemu_pid = pid
                    watch = ConsoleWatch(self._console_log(pid), t0)
                    watch.start()
            done = reap(proc, max(1.0, deadline - now()))
            t_created = now()
            if done.returncode != 0:
                raise BenchError(f"qumran create {name} failed: {' | '.join(lines)[-600:]}")
            tries, ssh_cpu = until_success(self.ssh_argv(name), deadline, SSH_POLL, self.env)
            t_ssh = now()
        finally:
            if proc.poll() is None:
                proc.kill()
            if watch is not None:
                watch.stop()
            if prober is not None:
                prober.join(timeout=max(0.0, deadline - now()))
        times = {
            "ssh": t_ssh - t0,
            **steps,
            "returned": t_created - t0,
            "ssh_tries": float(tries),
            "daemon_cpu": cpu_seconds([self.q.pid]) - cpu0,
            "client_cpu": done.cpu + ssh_cpu,
            "qemu_cpu": cpu_seconds([qemu_pid]) if qemu_pid else 0.0,
        }
        if watch is not None:
            times.update(watch.times())
        times.update(probed)
        return times

    def ssh_argv(self, name: str) -> list[str]:
        """``qumran ssh NAME -- true`` with the libvirt side's options that bound one try
        (create_libvirt.ssh_argv)."""
        return [self.q.cli, "ssh", name, "-i", str(self.key), "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10", "--", "true"]  # fmt: skip

    def _probe(self, port: int, t0: float, deadline: float, out: dict[str, float]) -> None:
        from vslib.create_libvirt import SSH_POLL as PLAIN_POLL
        from vslib.create_libvirt import ssh_argv

        with contextlib.suppress(BenchError):
            until_success(ssh_argv(self.key, port), deadline, PLAIN_POLL)
            out["plain_ssh"] = now() - t0

    def _console_log(self, pid: int) -> Path:
        deadline = time.monotonic() + 5  # the pid file is written before start returns
        while True:
            with contextlib.suppress(BenchError):
                return self.q._console_log(pid)
            if time.monotonic() > deadline:
                raise BenchError(f"qumrand keeps no run folder for pid {pid}")
            time.sleep(0.01)

    def remove(self, name: str) -> None:
        """Destroy and undefine the VM and delete the disk volume create made."""
        for argv in (["destroy", name], ["undefine", name], ["vol-delete", name]):
            subprocess.run([self.q.cli, *argv], env=self.env, capture_output=True, timeout=120)
