"""`virsh console` against a real qumrand: the stream ends cleanly both ways.

virsh runs on a pseudo-terminal (it refuses a console without one). When the guest powers
off, qumrand ends the stream and virsh answers with a finish that qumrand must confirm;
when the user types the escape (Ctrl-]), virsh aborts the stream and qumrand must confirm
that too. Either answer missing leaves virsh waiting for ever.
"""

from __future__ import annotations

import os
import select
import subprocess
import termios
import time
from pathlib import Path

from daemon_harness import Daemon
from libvirt_clients import client_env, define, uri, virsh


class Terminal:
    """virsh on a pseudo-terminal: what it prints, and keys typed into it."""

    def __init__(self, daemon: Daemon, *args: str) -> None:
        self.leader, follower = os.openpty()
        env = client_env() | {"TERM": "dumb"}
        self.proc = subprocess.Popen(["virsh", "-c", uri(daemon), *args], stdin=follower,
                                     stdout=follower, stderr=follower, env=env,
                                     start_new_session=True)  # fmt: skip
        os.close(follower)
        self.seen = b""

    def read_until(self, text: bytes, timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} in {self.seen[-500:]!r}"
            ready, _, _ = select.select([self.leader], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.leader, 4096)
                except OSError:  # EIO: virsh has gone, and its terminal with it
                    chunk = b""
                assert chunk, f"virsh's terminal closed before {text!r}: {self.seen[-500:]!r}"
                self.seen += chunk
        return self.seen

    def wait_raw(self, timeout: float = 30.0) -> None:
        """Until virsh has put the terminal in raw mode: it flushes what was typed before
        (TCSAFLUSH), so keys typed earlier would be lost. No event says so: poll termios."""
        deadline = time.monotonic() + timeout
        while termios.tcgetattr(self.leader)[3] & termios.ICANON:
            assert time.monotonic() < deadline, f"never in raw mode: {self.seen[-500:]!r}"
            time.sleep(0.01)

    def connected(self) -> None:
        self.read_until(b"Escape character is ^]")
        self.wait_raw()

    def type(self, keys: bytes) -> None:
        os.write(self.leader, keys)

    def exit_status(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"virsh console did not exit: {self.seen[-500:]!r}") from None
        finally:
            os.close(self.leader)


def _start(daemon: Daemon, root: Path) -> None:
    define(daemon, root)
    assert virsh(daemon, "start", "web1").returncode == 0


def test_console_ends_cleanly_when_the_guest_powers_off(
    fake_daemon: Daemon, daemon_root: Path
) -> None:
    _start(fake_daemon, daemon_root)
    term = Terminal(fake_daemon, "console", "web1")
    term.connected()
    term.type(b"echo hi-42\r")
    term.read_until(b"hi-42")  # typed into the guest, echoed back by it
    term.type(b"poweroff\r")  # the guest ends: end of stream, then virsh's finish
    assert term.exit_status() == 0
    fake_daemon.wait_state("web1", "shutoff")
    # The connection is whole after it: the same daemon answers the next client.
    assert "web1" in virsh(fake_daemon, "list", "--all").stdout


def test_console_escape_aborts_the_stream_and_virsh_exits(
    fake_daemon: Daemon, daemon_root: Path
) -> None:
    _start(fake_daemon, daemon_root)
    term = Terminal(fake_daemon, "console", "web1")
    term.connected()
    term.type(b"echo still-here\r")
    term.read_until(b"still-here")
    term.type(b"\x1d")  # Ctrl-]: virsh aborts the stream and waits for the answer
    assert term.exit_status() == 0
    assert fake_daemon.vm("web1")["state"] == "running"  # the guest goes on
    # Again: a second console on the same VM after the first went away.
    term = Terminal(fake_daemon, "console", "web1")
    term.connected()
    term.type(b"echo again\r")
    term.read_until(b"again")
    term.type(b"\x1d")
    assert term.exit_status() == 0
