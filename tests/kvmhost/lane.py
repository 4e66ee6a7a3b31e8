"""One lane of the kvm tier, inside a test host: take test files one at a time from a
queue shared with the host (a writable share), run pytest on each, record its status.

    python -m tests.kvmhost.lane QUEUE_DIR LANE -- PYTEST ARGS...

The queue is a directory (see :class:`Queue`): several test hosts take from one queue at
once, and the host puts back what a test host that froze or died had taken. A file's
output is passed through as it comes; when pytest has said nothing for a while, a line
says the file is still running, so the host can tell a quiet test from a frozen test host.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT = 120.0  # seconds of silence before a "still running" line


@dataclass(frozen=True)
class Entry:
    """A test file in the queue: ``name`` orders the queue (``NN-stem``), ``path`` is the
    file given to pytest."""

    name: str
    path: str


@dataclass(frozen=True)
class Result:
    name: str
    path: str
    status: int
    seconds: float
    lane: str


class Queue:
    """``queue/NAME`` holds a file still to run (its content: the path), ``running/LANE/NAME``
    one a lane has taken, ``done/NAME`` its result (``STATUS SECONDS LANE PATH``). Taking is a
    rename, which the host's file system does atomically for all the test hosts at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.waiting = root / "queue"
        self.running = root / "running"
        self.done = root / "done"

    def create(self, paths: list[str]) -> None:
        for directory in (self.waiting, self.running, self.done):
            directory.mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(paths):
            (self.waiting / f"{index:02d}-{Path(path).stem}").write_text(path)

    def pending(self) -> list[str]:
        return sorted(os.listdir(self.waiting))

    def take(self, lane: str) -> Entry | None:
        """The first file still waiting, now this lane's (None when the queue is empty)."""
        mine = self.running / lane
        mine.mkdir(parents=True, exist_ok=True)
        for name in self.pending():
            try:
                os.rename(self.waiting / name, mine / name)
            except FileNotFoundError:
                continue  # another lane took it first
            return Entry(name, (mine / name).read_text())
        return None

    def taken(self, lane: str) -> list[Entry]:
        """What ``lane`` has taken and not finished (a test host that died mid-file)."""
        mine = self.running / lane
        names = sorted(os.listdir(mine)) if mine.is_dir() else []
        return [Entry(name, (mine / name).read_text()) for name in names]

    def put_back(self, lane: str, entry: Entry) -> None:
        os.rename(self.running / lane / entry.name, self.waiting / entry.name)

    def finish(self, lane: str, entry: Entry, status: int, seconds: float) -> None:
        (self.done / entry.name).write_text(f"{status} {seconds:.1f} {lane} {entry.path}\n")
        (self.running / lane / entry.name).unlink()

    def results(self) -> list[Result]:
        found = []
        for name in sorted(os.listdir(self.done)):
            status, seconds, lane, path = (self.done / name).read_text().split(maxsplit=3)
            found.append(Result(name, path.strip(), int(status), float(seconds), lane))
        return found


def run_file(argv: list[str], heartbeat: float = HEARTBEAT) -> int:
    """Run ``argv``, passing its output through; after ``heartbeat`` seconds of silence,
    say that it is still running. Returns its exit status."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    heard = started
    out = sys.stdout.buffer
    line_open = False  # the output so far ends inside a line (pytest's progress dots)
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, heard + heartbeat - time.monotonic()))
        if not ready:
            out.write(
                b"%skvm tier: %s still running (%.0f s)\n"
                % (b"\n" if line_open else b"", argv[-1].encode(), time.monotonic() - started)
            )
            out.flush()
            heard, line_open = time.monotonic(), False
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out.write(chunk)
        out.flush()
        heard, line_open = time.monotonic(), not chunk.endswith(b"\n")
    return proc.wait()


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m tests.kvmhost.lane QUEUE_DIR LANE -- PYTEST ARGS...",
              file=sys.stderr)  # fmt: skip
        return 2
    queue, lane, pytest = Queue(Path(argv[0])), argv[1], argv[3:]
    while (entry := queue.take(lane)) is not None:
        started = time.monotonic()
        status = run_file([*pytest, entry.path])
        queue.finish(lane, entry, status, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
