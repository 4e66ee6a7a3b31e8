"""Run a command inside the KVM test host and get back its output and exit status.

The runner writes a small job directory (``job.sh``: cwd, environment, command; ``shares``:
writable directories), boots QEMU TCG with ``-cpu max`` (AMD SVM emulated) sharing ``/``
read-only, and reads the serial console. The guest's init prints ``KVMHOST-START-<nonce>``
before the job and ``KVMHOST-EXIT-<nonce> <status>`` after it; the nonce is random per run,
so a job that prints these words itself (the runner's own tests) cannot fool it.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .image import build_image

# Environment variables passed through from the caller, when set.
PASSTHROUGH = (
    "LANG", "LC_ALL", "TERM", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
    "PYTEST_ADDOPTS", "CI", "VIRTUAL_ENV", "NO_COLOR", "FORCE_COLOR",
)  # fmt: skip
PASSTHROUGH_PREFIXES = ("QUMRAN_",)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT_STATUS = 124  # what timeout(1) returns
BOOT_FAILED_STATUS = 125
# Files keep the host's owners and modes as they are; `multidevs=remap` keeps inode numbers
# unique across the several host file systems under one export.
_VIRTFS_OPTS = "security_model=none,multidevs=remap"


@dataclass(frozen=True)
class Job:
    argv: Sequence[str]
    cwd: Path
    env: dict[str, str]
    shares: Sequence[Path] = ()
    memory_mib: int = 2048
    cpus: int = 1
    timeout: float = 600.0
    idle_timeout: float | None = None  # no output for this long: taken as frozen (124)
    tty: bool = False  # whether the job's stdout/stderr are a terminal inside
    keep_kernel_log: Path | None = None  # where to copy the test host's kernel log
    kvm_trace: Path | None = None  # where to save the kvm trace up to a nested shutdown
    on_output: Callable[[bytes], None] | None = field(default=None, compare=False)


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """PATH, HOME=/tmp, XDG_CACHE_HOME and this process's pass-through variables, plus
    ``extra``."""
    env = {
        "PATH": os.environ.get("PATH", DEFAULT_PATH),
        "HOME": "/tmp",
        # HOME moves, the caches stay: the images built on the host (demo guest) are found.
        "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"),
    }
    for key, value in os.environ.items():
        if key in PASSTHROUGH or key.startswith(PASSTHROUGH_PREFIXES):
            env[key] = value
    env.update(extra or {})
    return env


def job_script(job: Job) -> str:
    """The script the guest runs in the chroot (POSIX sh, all values quoted)."""
    lines = [f"cd {shlex.quote(str(job.cwd))} || exit {BOOT_FAILED_STATUS}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in job.env.items()]
    command = " ".join(shlex.quote(a) for a in job.argv)
    if job.kvm_trace is None:
        lines.append("exec " + command)
    else:
        out = shlex.quote(str(job.kvm_trace))
        lines.append(KVM_TRACE_SCRIPT.format(command=command, out=out, lines=KVM_TRACE_LINES))
    return "\n".join(lines) + "\n"


# The test host's kvm trace events (every exit and entry of every nested guest, with the
# interrupt or exception being delivered), in a ring buffer that the first nested
# shutdown stops: SVM exit code 0x7f, a triple fault (the test host is always AMD SVM).
# KVM on AMD resets a vCPU that shuts down before userspace sees it, so this trace is
# what shows the fault itself. KVMHOST_TRACEFS is for the runner's own tests.
KVM_TRACE_LINES = 20000
KVM_TRACE_SCRIPT = """\
T=${{KVMHOST_TRACEFS:-/sys/kernel/tracing}}
[ -e "$T/trace" ] || mount -t tracefs nodev "$T" || echo "kvmhost: no tracefs: no kvm trace" >&2
echo 0 > "$T/tracing_on"; echo 16384 > "$T/buffer_size_kb"; echo > "$T/trace"
echo 1 > "$T/events/kvm/enable"
echo 'traceoff if exit_reason==127' > "$T/events/kvm/kvm_exit/trigger"
echo 1 > "$T/tracing_on"
{command}
status=$?
if [ "$(cat "$T/tracing_on")" = 0 ]; then
    tail -n {lines} "$T/trace" > {out}
    echo "kvmhost: a nested guest shut down (triple fault); kvm trace up to it:" {out} >&2
else
    echo 0 > "$T/tracing_on"
fi
exit $status"""


def qemu_argv(kernel: Path, initrd: Path, cmdline: str, job: Job, kernel_log: Path) -> list[str]:
    """ttyS0 carries the job's output; ttyS1, the kernel's console, goes to ``kernel_log``."""
    argv = [
        "qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-cpu", "max",
        "-smp", str(job.cpus), "-m", str(job.memory_mib),
        "-nodefaults", "-display", "none", "-no-reboot",
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        "-chardev", f"file,id=klog,path={kernel_log}", "-serial", "chardev:klog",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
        "-virtfs", f"local,path=/,mount_tag=hostroot,{_VIRTFS_OPTS},readonly=on",
        "-monitor", f"unix:{kernel_log.parent / MONITOR_SOCKET},server=on,wait=off",
    ]  # fmt: skip
    for index, share in enumerate(job.shares):
        argv += ["-virtfs", f"local,path={share},mount_tag=share{index},{_VIRTFS_OPTS}"]
    return argv


def run_job(job: Job) -> tuple[int, bytes]:
    """Boot the test host, run ``job`` in it; return (exit status, output)."""
    image = build_image()
    nonce = secrets.token_hex(6)
    with tempfile.TemporaryDirectory(prefix="qumran-kvmhost-") as tmp:
        jobdir = Path(tmp)
        (jobdir / "job.sh").write_text(job_script(job))
        (jobdir / "shares").write_text("".join(f"share{i} {p}\n" for i, p in enumerate(job.shares)))
        # Warnings and worse (oops, soft lockup, hung task, RCU stall, panic) reach the log.
        cmdline = (
            "console=ttyS1 loglevel=5 panic=-1 mitigations=off "
            f"kvmhost.job={jobdir} kvmhost.nonce={nonce} kvmhost.tty={int(job.tty)}"
        )
        kernel_log = jobdir / "kernel.log"
        argv = qemu_argv(image.kernel, image.initrd, cmdline, job, kernel_log)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        try:
            result = _collect(proc, nonce, job)
        except BaseException:
            _stop(proc, grace=0)
            raise
        if result[0] == TIMEOUT_STATUS:  # where the frozen test host's CPUs are, before the kill
            state = cpu_state(jobdir / MONITOR_SOCKET, job.cpus)
            if job.on_output is not None:
                job.on_output(state)
            result = result[0], result[1] + state
        # After the exit marker the guest powers off at once; after a timeout it is killed.
        _stop(proc, grace=10 if result[0] != TIMEOUT_STATUS else 0)
        if result[0] in (TIMEOUT_STATUS, BOOT_FAILED_STATUS):
            result = result[0], result[1] + kernel_log_note(kernel_log, job.on_output)
        if result[0] == BOOT_FAILED_STATUS:
            # With -no-reboot, a reset or triple fault of the test host ends QEMU with 0;
            # a QEMU that crashed ends with a signal (negative here).
            note = f"kvmhost: the test host's QEMU exited with status {proc.returncode}\n"
            if job.on_output is not None:
                job.on_output(note.encode())
            result = result[0], result[1] + note.encode()
        if job.keep_kernel_log is not None and kernel_log.is_file():
            job.keep_kernel_log.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(kernel_log, job.keep_kernel_log)
        return result


KERNEL_LOG_LINES = 80
MONITOR_SOCKET = "monitor.sock"


def monitor_commands(cpus: int) -> tuple[str, ...]:
    """Registers of every vCPU, then each one's local APIC (pending and in-service vectors)."""
    per_cpu = [command for cpu in range(cpus) for command in (f"cpu {cpu}", "info lapic")]
    return ("info registers -a", *per_cpu)


def cpu_state(socket_path: Path, cpus: int, timeout: float = 5.0) -> bytes:
    """What QEMU's human monitor answers to :func:`monitor_commands`, as a note for the
    output (empty if the monitor cannot be reached)."""
    commands = monitor_commands(cpus)
    answers = bytearray()
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            _read_to_prompt(sock, answers)  # the greeting
            answers.clear()
            for command in commands:
                sock.sendall(command.encode() + b"\n")
                _read_to_prompt(sock, answers)
    except OSError:
        pass
    if not answers:
        return b""
    # The monitor echoes each command key by key, with terminal escapes: drop the echo.
    text = re.sub(rb"\x1b\[[0-9;]*[A-Za-z]", b"", bytes(answers)).replace(b"\r", b"")
    echoes = tuple(command.encode() for command in commands)
    lines = [line for line in text.split(b"\n") if line.strip() and not line.endswith(echoes)]
    return b"\nkvmhost: the frozen test host's CPUs (QEMU monitor):\n" + b"\n".join(lines) + b"\n"


def _read_to_prompt(sock: socket.socket, into: bytearray) -> None:
    while not into.endswith(b"(qemu) "):
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("the monitor closed")
        into += chunk
    del into[len(into) - len(b"(qemu) ") :]


def kernel_log_note(path: Path, on_output: Callable[[bytes], None] | None) -> bytes:
    """The end of the test host's kernel log, for a test host that died or froze (empty if
    it said nothing: its console only carries warnings and worse)."""
    try:
        lines = path.read_bytes().splitlines()[-KERNEL_LOG_LINES:]
    except OSError:
        return b""
    if not lines:
        return b""
    note = b"\nkvmhost: the test host's kernel said (last %d lines):\n" % len(lines)
    note += b"\n".join(lines) + b"\n"
    if on_output is not None:
        on_output(note)
    return note


def _collect(proc: subprocess.Popen[bytes], nonce: str, job: Job) -> tuple[int, bytes]:
    """Read the console: drop what precedes the start marker, stream the job's output."""
    assert proc.stdout is not None
    stream = ConsoleStream(nonce, job.on_output)
    deadline = time.monotonic() + job.timeout
    heard = time.monotonic()  # when the job last said something
    fd = proc.stdout.fileno()
    while stream.status is None:
        now = time.monotonic()
        left = deadline - now
        if left <= 0:
            stream.flush()
            stream.note(f"\nkvmhost: timed out after {job.timeout:g} s\n")
            return TIMEOUT_STATUS, bytes(stream.output)
        if job.idle_timeout is not None and stream.started:
            quiet = now - heard
            if quiet >= job.idle_timeout:
                stream.flush()
                stream.note(f"\nkvmhost: no output for {quiet:.0f} s: taken as frozen\n")
                return TIMEOUT_STATUS, bytes(stream.output)
            left = min(left, job.idle_timeout - quiet)
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 65536) if ready else b""
        if ready and not chunk:
            stream.flush()
            stream.note(f"\nkvmhost: guest stopped without a status:\n{stream.preamble()}\n")
            return BOOT_FAILED_STATUS, bytes(stream.output)
        stream.feed(chunk)
        if chunk and stream.started:  # the job's start or output: the idle clock restarts
            heard = time.monotonic()
    return stream.status, bytes(stream.output)


class ConsoleStream:
    """Splits the console into boot noise, job output and the exit marker."""

    def __init__(self, nonce: str, on_output: Callable[[bytes], None] | None) -> None:
        self.start = f"KVMHOST-START-{nonce}\n".encode()
        self.exit = f"KVMHOST-EXIT-{nonce} ".encode()
        self.on_output = on_output
        self.before = bytearray()  # console text before the job started
        self.pending = bytearray()  # job output held back: it may begin the exit marker
        self.output = bytearray()
        self.started = False
        self.status: int | None = None

    def feed(self, chunk: bytes) -> None:
        if self.status is not None:
            return  # the job is over: what follows is the guest shutting down
        if not self.started:
            self.before += chunk
            index = self.before.find(self.start)
            if index < 0:
                return
            self.started = True
            chunk = bytes(self.before[index + len(self.start) :])
            del self.before[index:]
        self.pending += chunk
        index = self.pending.find(self.exit)
        if index >= 0:
            tail = self.pending[index + len(self.exit) :]
            if b"\n" not in tail:
                return  # the status digits have not all arrived yet
            self._emit(bytes(self.pending[:index]))
            self.status = int(tail.split(b"\n")[0].strip())
            return
        keep = _marker_prefix_len(self.pending, self.exit)
        self._emit(bytes(self.pending[: len(self.pending) - keep]))
        del self.pending[: len(self.pending) - keep]

    def flush(self) -> None:
        """Emit output held back as a possible marker start (the job is cut short)."""
        self._emit(bytes(self.pending))
        self.pending.clear()

    def note(self, text: str) -> None:
        self._emit(text.encode())

    def preamble(self) -> str:
        return self.before.decode(errors="replace")

    def _emit(self, data: bytes) -> None:
        if data:
            self.output += data
            if self.on_output is not None:
                self.on_output(data)


def _marker_prefix_len(data: bytearray, marker: bytes) -> int:
    """Length of the longest suffix of ``data`` that is a proper prefix of ``marker``."""
    for length in range(min(len(marker) - 1, len(data)), 0, -1):
        if data.endswith(marker[:length]):
            return length
    return 0


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Give the guest ``grace`` seconds to power off, then make sure QEMU is gone."""
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def run_in_kvmhost(
    cmd: Sequence[str],
    timeout: float = 600.0,
    cwd: str | Path | None = None,
    *,
    env: dict[str, str] | None = None,
    shares: Sequence[str | Path] = (),
    memory_mib: int = 2048,
    cpus: int = 1,
    tty: bool = False,
    on_output: Callable[[bytes], None] | None = None,
    kernel_log: str | Path | None = None,
    kvm_trace: str | Path | None = None,
    idle_timeout: float | None = None,
) -> tuple[int, str]:
    """Run ``cmd`` inside the KVM test host; return (exit status, combined output).

    ``cwd`` defaults to the current directory (the host's whole file system is visible).
    ``shares`` are host directories made writable inside, at the same paths. ``env`` adds
    to the default environment (see :func:`job_env`). ``tty`` gives the command a terminal
    for its output (colours, line buffering); otherwise it writes to a pipe. ``on_output``
    receives the output as it arrives. ``kernel_log`` keeps a copy of the test host's kernel
    log (warnings and worse; its end is shown anyway when the host dies or freezes).
    ``kvm_trace``: trace KVM in the test host, and if a nested guest shuts down (a triple
    fault), save the trace's last events up to it in this file. ``idle_timeout``: a job
    silent this long (once started) is taken as a frozen test host, as at the timeout. Status
    124 means the timeout expired, 125 that the
    guest failed before running the command (or the cwd is missing).
    """
    if shutil.which("qemu-system-x86_64") is None:
        raise RuntimeError("qemu-system-x86_64 is not installed")
    shares = list(shares)
    if kvm_trace is not None:
        shares.append(Path(kvm_trace).absolute().parent)
    for share in shares:
        Path(share).mkdir(parents=True, exist_ok=True)  # e.g. a results dir not made yet
    job = Job(
        argv=list(cmd),
        cwd=Path(cwd if cwd is not None else os.getcwd()).absolute(),
        env=job_env(env),
        shares=[Path(s).absolute() for s in shares],
        memory_mib=memory_mib,
        cpus=cpus,
        timeout=timeout,
        idle_timeout=idle_timeout,
        tty=tty,
        on_output=on_output,
        keep_kernel_log=Path(kernel_log).absolute() if kernel_log is not None else None,
        kvm_trace=Path(kvm_trace).absolute() if kvm_trace is not None else None,
    )
    status, output = run_job(job)
    return status, output.decode(errors="replace")


def stream_to_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
