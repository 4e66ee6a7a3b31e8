"""Running host programs for image work: failures as one error, Ctrl-C stops the child.

A program's output is read line by line (``on_line``), so a caller can turn it into
progress; its last lines are kept for the error message when it fails.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import logging
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence

from qumran.images.errors import ToolFailed
from qumran.images.tools import program

log = logging.getLogger(__name__)

TAIL_LINES = 12
STOP_TIMEOUT = 30.0


def run(
    argv: Sequence[str],
    what: str,
    *,
    on_line: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    split: str = "\n",
    stdin_text: str | None = None,
) -> str:
    """Run ``argv`` and return its output (stdout and stderr together).

    ``what`` names the step in the error (``"making the file system"``). ``split`` is the
    separator of the lines given to ``on_line``: qemu-img's progress ends with ``\\r``.
    Interrupted (Ctrl-C), the child is stopped and waited for before the interrupt goes on,
    so nothing keeps writing into a directory the caller is about to remove.
    """
    argv = [program(argv[0]), *argv[1:]]
    log.debug("%s: %s", what, " ".join(argv))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    output: list[str] = []
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL if stdin_text is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=None if env is None else dict(env),
        cwd=cwd,
    )
    try:
        if stdin_text is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin_text.encode())  # small: sfdisk's script
            proc.stdin.close()
        assert proc.stdout is not None
        for line in _lines(proc.stdout.fileno(), split):
            output.append(line)
            if line.strip():
                tail.append(line.strip())
            if on_line is not None:
                on_line(line)
        status = proc.wait()
    except BaseException:
        _stop(proc)
        raise
    if status != 0:
        detail = " / ".join(tail) or "no output"
        raise ToolFailed(f"{what}: {os.path.basename(argv[0])} failed (exit {status}): {detail}")
    return "\n".join(output)


def _lines(fd: int, split: str) -> Iterator[str]:
    """Lines read from ``fd`` as they come, split on ``split`` as well as on newlines."""
    pending = ""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pattern = re.compile("[\n" + re.escape(split) + "]")
    # os.read returns what is there: a pipe's partial line is not held back for a full buffer.
    while chunk := os.read(fd, 65536):
        pending += decoder.decode(chunk)
        *lines, pending = pattern.split(pending)
        yield from lines
    if pending:
        yield pending


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child we are abandoning: SIGINT first (its own clean-up), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
