"""The Qumran side: a private qumrand (its own socket, state and run folders) and the CLI.

The daemon is started the way a user would run it, with the real QEMU driver; VMs are
defined with ``qumran define FILE.yaml`` and started with ``qumran start``. Ready is
seen where a user sees it: on the console WebSocket the daemon serves (the daemon
replays recent output to a new client, so connecting after ``start`` returns loses nothing).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vslib.measure import BenchError, cpu_seconds, now, process_started, run, wait_for_text

DEFINE_WORKERS = 4  # `qumran define` processes at once (mostly Python start-up)


class QumranStack:
    def __init__(
        self, root: Path, bin_dir: Path, kernel: Path, initrd: Path, cmdline: str,
        driver: str = "real",
    ) -> None:  # fmt: skip
        self.root = root
        self.driver = driver  # "fake": stand-in VM processes (qumrand --driver fake)
        self.bin_dir = bin_dir
        self.kernel, self.initrd, self.cmdline = kernel, initrd, cmdline
        self.socket = str(root / "qumrand.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        # Measure what an installed tool does: byte-compiled modules, read from cache.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        return {**env, "QUMRAN_SOCKET": self.socket}

    def compile(self) -> None:
        """Write the byte code the CLI and daemon would otherwise compile on every start."""
        import qumran

        package = Path(qumran.__file__).parent
        run([str(self.bin_dir / "python"), "-m", "compileall", "-q", str(package)], env=self.env)

    @property
    def cli(self) -> str:
        return str(self.bin_dir / "qumran")

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("qumrand is not running")
        return self.proc.pid

    # --- the daemon ---------------------------------------------------------------------

    def start_daemon(self, timeout: float = 30) -> None:
        self._exec_daemon()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"qumrand exited: {self._log_tail()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(self.socket)
                return
            time.sleep(0.05)
        raise BenchError(f"qumrand did not listen in {timeout}s: {self._log_tail()}")

    def _exec_daemon(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.bin_dir / "qumrand"),
            "--socket", self.socket,
            "--state-dir", str(self.root / "state"),
            "--run-dir", str(self.root / "run"),
            "--driver", self.driver,
        ]  # fmt: skip
        with open(self.root / "qumrand.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def restart_to_list(self, running: int, timeout: float = 60) -> float:
        """Stop qumrand (SIGTERM; its VMs keep running), exec it again, and return the
        seconds from that exec until `qumran list` first succeeds showing ``running`` VMs."""
        if self.proc is None:
            raise BenchError("qumrand is not running")
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        t0 = now()
        self._exec_daemon()
        deadline = t0 + timeout
        while now() < deadline:
            done = subprocess.run([self.cli, "list"], env=self.env, capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.count(" running") >= running:
                return now() - t0
            time.sleep(0.002)
        raise BenchError(
            f"restarted qumrand did not list {running} running VMs: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "qumrand.log").read_text()[-1500:]
        return ""

    def stop(self) -> None:
        """Destroy our VMs, stop the daemon, and kill any VM process it left behind."""
        if self.proc is not None and self.proc.poll() is None:
            for name in self._running():
                subprocess.run([self.cli, "destroy", name], env=self.env, capture_output=True)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._kill_leftovers()

    def _running(self) -> list[str]:
        done = subprocess.run(
            [self.cli, "--json", "list"], env=self.env, capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            return []
        return [vm["name"] for vm in json.loads(done.stdout)]

    def _kill_leftovers(self) -> None:
        # A VM process outlives its daemon by design: kill those whose command line
        # names our run folder (the pid file alone could name a reused pid).
        for pidfile in (self.root / "run").glob("vms/*/pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if str(self.root).encode() in cmdline:
                    os.kill(pid, signal.SIGKILL)

    # --- VMs ----------------------------------------------------------------------------

    def definition(self, name: str) -> str:
        # JSON strings are valid YAML strings: paths and the command line stay quoted.
        return (
            f"name: {name}\nmemory: 256M\nvcpus: 1\nboot:\n"
            f"  kernel: {json.dumps(str(self.kernel))}\n"
            f"  initrd: {json.dumps(str(self.initrd))}\n"
            f"  cmdline: {json.dumps(self.cmdline)}\n"
        )

    def definition_file(self, name: str) -> Path:
        folder = self.root / "definitions"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.yaml"
        path.write_text(self.definition(name))
        return path

    def define_many(self, names: list[str]) -> None:
        files = [self.definition_file(name) for name in names]
        with ThreadPoolExecutor(DEFINE_WORKERS) as pool:
            for _ in pool.map(lambda p: run([self.cli, "define", str(p)], env=self.env), files):
                pass

    def start_many(self, names: list[str]) -> None:
        with ThreadPoolExecutor(DEFINE_WORKERS) as pool:
            for _ in pool.map(lambda n: run([self.cli, "start", n], env=self.env), names):
                pass

    def start_to_ready(self, name: str, ready: bytes, timeout: float = 120) -> dict[str, float]:
        """Seconds from running `qumran start` until ``ready`` arrives on the console
        WebSocket; also until the daemon forked QEMU, until `qumran start` returned, and
        how much later the line reached the WebSocket than QEMU's console log file."""
        cpu0 = cpu_seconds([self.pid])
        t0 = now()
        info = json.loads(run([self.cli, "--json", "start", name], env=self.env, timeout=timeout))
        returned = now()
        pid = int(info["pid"])
        forked = process_started(pid)
        log = self._console_log(pid)
        in_file: list[float] = []
        watcher = threading.Thread(
            target=lambda: in_file.append(wait_for_text(log, ready, t0 + timeout)), daemon=True
        )
        watcher.start()
        seen = self._read_console(name, ready, t0 + timeout)
        watcher.join(timeout=5)
        times = {
            "ready": seen - t0,
            "forked": forked - t0,
            "returned": returned - t0,
            "daemon_cpu": cpu_seconds([self.pid]) - cpu0,
        }
        if in_file:
            times["delivery"] = seen - in_file[0]
        return times

    def _console_log(self, pid: int) -> Path:
        for pidfile in (self.root / "run").glob("vms/*/pid"):
            with contextlib.suppress(OSError, ValueError):
                if int(pidfile.read_text().strip()) == pid:
                    return pidfile.parent / "console.log"
        raise BenchError(f"no run folder of qumrand holds pid {pid}")

    def _read_console(self, name: str, ready: bytes, deadline: float) -> float:
        """When ``ready`` arrived on the daemon's console WebSocket (:func:`now`)."""
        from websockets.sync.client import unix_connect

        uri = f"ws://localhost/v1/vms/{name}/console"
        with unix_connect(self.socket, uri, compression=None, close_timeout=2) as ws:
            window = b""
            while True:
                data = ws.recv(timeout=max(0.0, deadline - now()))
                window += data.encode() if isinstance(data, str) else data
                if ready in window:
                    return now()
                window = window[-len(ready) :]

    def start(self, name: str) -> None:
        run([self.cli, "start", name], env=self.env)

    def destroy(self, name: str) -> None:
        subprocess.run([self.cli, "destroy", name], env=self.env, capture_output=True, timeout=60)

    def versions(self) -> dict[str, str]:
        import qumran

        repo = str(Path(__file__).resolve().parents[2])

        def git(*args: str) -> str:
            done = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True)
            return done.stdout.strip() if done.returncode == 0 else ""

        head = git("rev-parse", "--short", "HEAD") or "no git"
        if git("status", "--porcelain", "--", "src"):
            head += ", with uncommitted changes in src/"
        return {"qumran": f"{qumran.__version__} ({head})"}
