"""The kvm tier: every file of tests/kvm in a few test hosts running side by side.

    python -m tests.kvmhost tier [--lanes N] [--cpus N] [--memory MIB] FILES... -- PYTEST ARGS

Each lane is one test host at a time that takes files from a shared queue (lane.py) until
none is left, longest first, so the lanes end close together. Each test host boots once
for many files (about 10 s under TCG). A test host that freezes (no output
for ``idle`` seconds: lane.py speaks at least every 2 minutes) or dies has its file put
back in the queue, up to ``attempts`` tries in all, and the lane goes on in a new one.
Lines are prefixed with their lane; each test host's kernel log (warnings and worse) is
kept in the artifacts directory, and its end is shown under a file that failed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .lane import Entry, Queue, Result
from .runner import BOOT_FAILED_STATUS, TIMEOUT_STATUS, run_in_kvmhost, stream_to_stdout

# Seconds each file took in a one-CPU lane, beside the other lane (2026-12-06): the
# queue's order. A file not listed is taken as long, so it starts early.
COSTS = {
    "test_virtio_guest.py": 273, "test_debian_native.py": 182, "test_daemon_saves.py": 151,
    "test_daemon_kvm.py": 117, "test_vmm_boot.py": 99, "test_networks_kvm.py": 69,
    "test_vmm_snapshot.py": 53, "test_daemon_qcow2.py": 53, "test_daemon_passt.py": 53,
    "test_vhost_user_guest.py": 44, "test_vmm_passt.py": 42, "test_vmm_tiny.py": 28,
    "test_vmm_bad_input.py": 9,
}  # fmt: skip
UNKNOWN_COST = 400
KERNEL_LOG_TAIL = 40


def by_cost(paths: list[str]) -> list[str]:
    """Longest first (a greedy schedule: the lanes then end close together)."""
    return sorted(paths, key=lambda p: (-COSTS.get(Path(p).name, UNKNOWN_COST), p))


class Printer:
    """Whole lines, each prefixed with its lane, from several lanes at once."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write
        self.lock = threading.Lock()
        self.partial: dict[str, bytes] = {}

    def feed(self, lane: str, data: bytes) -> None:
        with self.lock:
            text = self.partial.get(lane, b"") + data
            *lines, self.partial[lane] = text.split(b"\n")
            for line in lines:
                self.write(b"[%s] %s\n" % (lane.encode(), line.rstrip(b"\r")))

    def flush(self, lane: str) -> None:
        """End a lane's unfinished line (its test host stopped in the middle of it)."""
        if self.partial.get(lane):
            self.feed(lane, b"\n")

    def say(self, lane: str, text: str) -> None:
        self.flush(lane)
        self.feed(lane, text.encode())


class Lane:
    def __init__(self, name: str, queue: Queue, tier: Tier) -> None:
        self.name = name
        self.queue = queue
        self.tier = tier
        self.hosts = 0
        self.barren = 0  # test hosts in a row that failed without taking a file

    def run(self) -> None:
        while self.queue.pending():
            self.hosts += 1
            log = self.tier.artifacts / f"{self.name}.{self.hosts}.kernel.log"
            failed_before = self.failed()
            status, _ = run_in_kvmhost(
                [sys.executable, "-m", "tests.kvmhost.lane", str(self.queue.root), self.name,
                 "--", *self.tier.pytest],
                timeout=self.tier.timeout, idle_timeout=self.tier.idle, cwd=Path.cwd(),
                shares=[self.queue.root], memory_mib=self.tier.memory, cpus=self.tier.cpus,
                env=self.tier.env, kernel_log=log,
                on_output=lambda data: self.tier.printer.feed(self.name, data),
            )  # fmt: skip
            self.tier.printer.flush(self.name)
            taken = self.queue.taken(self.name)
            for entry in taken:
                self.host_ended(entry, status)
            self.barren = self.barren + 1 if status != 0 and not taken else 0
            if self.barren >= self.tier.attempts:  # each one died before taking a file
                note = f"{self.barren} test hosts in a row ended ({status}) before a file"
                self.tier.printer.say(self.name, f"kvm tier: {note}; lane stopped\n")
                return
            if status not in (0, TIMEOUT_STATUS, BOOT_FAILED_STATUS):
                self.tier.printer.say(self.name, f"kvm tier: the lane itself failed ({status})\n")
                return
            if status == 0 and self.failed() - failed_before:
                self.show_kernel_log(log)

    def failed(self) -> set[str]:
        return {r.name for r in self.queue.results() if r.lane == self.name and r.status != 0}

    def host_ended(self, entry: Entry, status: int) -> None:
        """``entry`` was running when its test host froze or died."""
        tries = self.tier.tries[entry.name] = self.tier.tries.get(entry.name, 1) + 1
        if status in (TIMEOUT_STATUS, BOOT_FAILED_STATUS) and tries <= self.tier.attempts:
            self.tier.printer.say(
                self.name, f"kvm tier: the test host died during {entry.path}; it goes back "
                f"in the queue (try {tries} of {self.tier.attempts})\n",
            )  # fmt: skip
            self.queue.put_back(self.name, entry)
        else:
            self.queue.finish(self.name, entry, status or 1, 0.0)

    def show_kernel_log(self, log: Path) -> None:
        """The end of the test host's kernel log, under a file that failed in it (after a
        freeze or death the runner has shown it already)."""
        if log.is_file() and log.stat().st_size:
            lines = log.read_text(errors="replace").splitlines()[-KERNEL_LOG_TAIL:]
            self.tier.printer.say(self.name, "kvm tier: the test host's kernel log ends with:\n")
            for line in lines:
                self.tier.printer.say(self.name, line + "\n")


class Tier:
    def __init__(self, args: argparse.Namespace, pytest: list[str]) -> None:
        self.artifacts = Path(args.artifacts).absolute()
        self.pytest = pytest
        self.lanes = args.lanes
        self.cpus = args.cpus
        self.memory = args.memory
        self.timeout = args.timeout
        self.idle = args.idle
        self.attempts = args.attempts
        self.env = dict(item.split("=", 1) for item in args.env)
        self.tries: dict[str, int] = {}
        self.printer = Printer(stream_to_stdout)

    def run(self, files: list[str]) -> list[Result]:
        root = self.artifacts / "queue"
        shutil.rmtree(root, ignore_errors=True)
        queue = Queue(root)
        queue.create(by_cost(files))
        lanes = [Lane(f"k{n + 1}", queue, self) for n in range(self.lanes)]
        threads = [threading.Thread(target=lane.run, name=lane.name) for lane in lanes]
        for thread in threads:
            thread.start()
            time.sleep(2)  # the test hosts' starts need not collide
        for thread in threads:
            thread.join()
        return queue.results()


def summary(results: list[Result], files: list[str], seconds: float) -> tuple[str, int]:
    """A table of the files (a file never run counts as failed) and the tier's status."""
    done = {r.path: r for r in results}
    lines = [f"kvm tier: {len(files)} files in {seconds / 60:.1f} min"]
    status = 0
    for path in by_cost(files):
        result = done.get(path)
        if result is None:
            lines.append(f"  {path:44} not run")
            status = status or 1
            continue
        word = "passed" if result.status == 0 else f"FAILED ({result.status})"
        lines.append(f"  {path:44} {word:12} {result.seconds:6.0f} s  {result.lane}")
        status = status or result.status
    return "\n".join(lines) + "\n", status


def main(argv: list[str]) -> int:
    ours, pytest = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv \
        else (argv, [])  # fmt: skip
    parser = argparse.ArgumentParser(prog="python -m tests.kvmhost tier")
    parser.add_argument("files", nargs="+", help="test files, each run by pytest on its own")
    parser.add_argument("--lanes", type=int, default=2, help="test hosts at once (default 2)")
    parser.add_argument("--cpus", type=int, default=1, help="each test host's CPUs (default 1)")
    parser.add_argument("--memory", type=int, default=5120, help="each one's RAM in MiB")
    parser.add_argument("--timeout", type=float, default=3600.0, help="a test host's limit, s")
    parser.add_argument("--idle", type=float, default=300.0, help="silence taken as frozen, s")
    parser.add_argument("--attempts", type=int, default=3, help="tries of a file whose host died")
    parser.add_argument("--artifacts", default="artifacts/kvm-tier", help="kernel logs, queue")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE to set inside")
    args = parser.parse_args(ours)
    pytest = pytest or [sys.executable, "-m", "pytest", "-m", "kvm"]
    started = time.monotonic()
    results = Tier(args, pytest).run(args.files)
    text, status = summary(results, args.files, time.monotonic() - started)
    print(text, end="", flush=True)
    return status
