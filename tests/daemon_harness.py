"""A real qumrand in a subprocess, for tests: start, stop, kill -9, restart.

One fixture to build the daemon every test talks to (like a microvm factory): its
socket, state and runtime folders live in one short temporary folder (UNIX socket paths
are limited to 108 bytes).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

DAEMON_START_TIMEOUT = 20.0


class Daemon:
    def __init__(
        self,
        root: Path,
        driver: str = "fake",
        web: str | None = None,
        start_timeout: float = DAEMON_START_TIMEOUT,
        options: tuple[str, ...] = (),
        netns: str | None = None,
    ) -> None:
        self.options = options  # more qumrand options, such as smaller limits
        # The network namespace qumrand runs in (tests/netns.py). Without one it manages
        # no networks: a test's qumrand never makes a bridge, dnsmasq or firewall rule
        # in the host's own namespace (ARCHITECTURE.md, "Network tests stay on this machine").
        self.netns = netns
        self.root = root
        self.start_timeout = start_timeout
        self.driver = driver
        self.web = web  # HOST:PORT of the web manager, or None for none
        self.socket = str(root / "qumrand.sock")
        self.log = root / "qumrand.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "QUMRAN_SOCKET": self.socket}

    def start(self) -> None:
        argv = [
            sys.executable, "-m", "qumran.daemon.main",
            "--socket", self.socket,
            "--state-dir", str(self.root / "state"),
            "--run-dir", str(self.root / "run"),
            "--driver", self.driver,
            "--log-level", "debug",
            "--no-config",  # the machine's own settings file is not the test's
        ]  # fmt: skip
        if self.web is not None:
            argv += ["--web", self.web]
        if self.netns is None:
            argv.append("--no-networks")
        else:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        argv += self.options
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qumrand exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.socket)
            except OSError:
                time.sleep(0.05)
                continue
            # Listening; but a starting qumrand answers lists early (daemon/early.py) and
            # holds other requests until its full server runs: started is answering one.
            try:
                self.call("GET", "/v1/daemon", timeout=max(0.1, deadline - time.monotonic()))
            except httpx.HTTPError:
                continue
            return
        raise RuntimeError(f"qumrand did not start: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        status = self.proc.wait(timeout=30)
        self.proc = None
        return status

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def client(self) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=self.socket)
        return httpx.Client(transport=transport, base_url="http://qumrand", timeout=60)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self.client() as c:
            return c.request(method, path, **kwargs)

    def vm(self, name: str) -> dict[str, Any]:
        response = self.call("GET", f"/v1/vms/{name}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def wait_state(self, name: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.vm(name)
            if info["state"] == state or time.monotonic() > deadline:
                assert info["state"] == state, f"{name}: {info['state']} ({info['reason']})"
                return info
            time.sleep(0.05)

    def cleanup(self) -> None:
        """Stop the daemon and every VM process it left behind."""
        if self.proc is not None:
            self.stop(signal.SIGKILL)
        for pidfile in (self.root / "run").glob("vms/*/pid"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        subprocess.run(["pkill", "-KILL", "-f", str(self.root)], check=False)


def short_tmpdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="q", dir="/tmp"))
    path.chmod(0o755)  # other test users must reach the socket
    return path


def remove_tmpdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # ended while we looked
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


PR_SET_CHILD_SUBREAPER = 36  # include/uapi/linux/prctl.h


@contextlib.contextmanager
def child_subreaper() -> Iterator[None]:
    """Make this process the subreaper of its descendants while the block runs.

    A VM process outlives a killed qumrand and is re-parented to its nearest subreaper:
    with this, to the test, so :func:`descendants` still finds every VM process any daemon
    the test started has left behind — whatever its command line says.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def system_user(name: str) -> pwd.struct_passwd:
    """A real second user for tests against a root qumrand (created once, kept: a system
    user without a home, as the tests only need its uid and gid)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)
        return pwd.getpwnam(name)
