"""Drive a qumran-vmm process in tests: console on pipes or a socket, control socket,
exit status. One instance per VM; ``close`` always leaves nothing running."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

QUMRAN_VMM = str(Path(sys.executable).with_name("qumran-vmm"))


class ConsoleBuffer:
    """Bytes read from a console, with waiting for a pattern."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._cond = threading.Condition()
        self.closed = False
        # Called when a wait fails, outside the lock: what else to say about the VM.
        self.on_stall: Callable[[], str] | None = None

    def feed(self, data: bytes) -> None:
        with self._cond:
            self._data += data
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return self._data.decode(errors="replace")

    def mark(self) -> int:
        with self._cond:
            return len(self._data)

    def wait_for(
        self, pattern: str, timeout: float, since: int = 0, diagnose: bool = True
    ) -> re.Match[str]:
        regex = re.compile(pattern, re.DOTALL)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = regex.search(self._data[since:].decode(errors="replace"))
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    tail = self._data[-2000:].decode(errors="replace")
                    break
                self._cond.wait(min(left, 0.5))
        more = self.on_stall() if self.on_stall is not None and diagnose else ""
        raise AssertionError(f"{pattern!r} not seen in {timeout}s; console:\n{tail}{more}")

    def since(self, mark: int) -> bytes:
        with self._cond:
            return bytes(self._data[mark:])


def _pump(stream: Any, buffer: ConsoleBuffer) -> None:
    try:
        while data := stream.read1(65536) if hasattr(stream, "read1") else stream.recv(65536):
            buffer.feed(data)
    except OSError:
        pass
    finally:
        buffer.close()


class Vmm:
    def __init__(
        self,
        workdir: Path,
        kernel: Path,
        initrd: Path | None = None,
        cmdline: str = "console=ttyS0 quiet panic=-1",
        memory: str = "256M",
        vcpus: int = 1,
        name: str = "testvm",
        console: str = "stdio",
        extra: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.control_path = workdir / "control.sock"
        self.console_path = workdir / "console.sock" if console == "socket" else None
        self.argv = [QUMRAN_VMM, "--name", name, "--kernel", str(kernel), "--cmdline", cmdline,
                     "--memory", memory, "--vcpus", str(vcpus),
                     "--control", str(self.control_path)]  # fmt: skip
        if initrd is not None:
            self.argv += ["--initrd", str(initrd)]
        self.argv += ["--console", f"socket:{self.console_path}" if self.console_path else "stdio"]
        self.argv += list(extra)
        self.console = ConsoleBuffer()
        self.console.on_stall = self.diagnose
        self.stderr_path = workdir / "stderr.txt"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Vmm:
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
            )
        if self.console_path is None:
            threading.Thread(
                target=_pump, args=(self.proc.stdout, self.console), daemon=True
            ).start()
        else:
            self.attach_console(self.console)
        return self

    def _wait_socket(self, path: Path, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"qumran-vmm exited with {self.proc.returncode}: {self.stderr}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} did not appear in {timeout}s")
            time.sleep(0.02)

    def attach_console(self, buffer: ConsoleBuffer) -> socket.socket:
        """Connect a console client whose output lands in ``buffer``."""
        assert self.console_path is not None
        self._wait_socket(self.console_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.console_path))
        threading.Thread(target=_pump, args=(sock, buffer), daemon=True).start()
        self._console_sock = getattr(self, "_console_sock", sock)
        return sock

    def type(self, text: str, via: socket.socket | None = None) -> None:
        data = text.encode()
        if via is not None:
            via.sendall(data)
        elif self.console_path is not None:
            self._console_sock.sendall(data)
        else:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def command(self, cmd: str, timeout: float = 30.0) -> str:
        """Type a shell command; return its output (between two unique markers)."""
        token = f"Q{time.monotonic_ns() % 10**9}"
        since = self.console.mark()
        self.type(f"echo {token}-B; {cmd}; echo {token}-E\n")
        found = self.console.wait_for(rf"{token}-B\r?\n(.*?){token}-E", timeout, since)
        return found.group(1).replace("\r", "")

    def control(self, cmd: str, **extra: Any) -> dict[str, Any]:
        self._wait_socket(self.control_path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.control_path))
            s.sendall(json.dumps({"cmd": cmd, **extra}).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        result: dict[str, Any] = json.loads(reply)
        return result

    def diagnose(self) -> str:
        """What the VM was doing when its console went quiet: for a failed wait's message.

        The console has been seen to stop in mid-line under the nested KVM (a lost
        interrupt in the guest, or a stuck VMM?): this tells the two apart next time."""
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            return f"\n-- qumran-vmm is not running (status {code}); stderr:\n{self.stderr[-1500:]}"
        lines = ["", "-- the VM when the console went quiet:"]
        try:
            before = self.control("stats")
            time.sleep(2)
            after = self.control("stats")
            lines += [f"control stats: {json.dumps(before)}", f"2 s later: {json.dumps(after)}"]
        except (OSError, ValueError, AssertionError) as exc:
            lines.append(f"control socket: {exc!r}")
        for task in sorted(Path(f"/proc/{self.pid}/task").glob("*")):
            try:
                stat = (task / "stat").read_text()
                wchan = (task / "wchan").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            lines.append(f"thread {task.name} {comm!r}: state {stat.rsplit(')', 1)[1].split()[0]}"
                         f", wchan {wchan or '-'}")  # fmt: skip
        mark = self.console.mark()
        self.type("\n")
        time.sleep(5)
        lines.append(f"a newline typed; the console then gave: {self.console.since(mark)!r}")
        return "\n".join(lines)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Kill the process if it still runs (then its sockets are ours to remove)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
            for path in (self.control_path, self.console_path):
                if path is not None and path.exists():
                    os.unlink(path)
