"""Progress of long image work: numbered phases, and within a phase a fraction and a detail.

On a terminal, one line is redrawn in place (phase, bar, percentage, elapsed time); anywhere
else (a log, CI, a pipe) each phase is one plain line and a fraction is reported at most
every quarter, so logs stay short. :class:`Silent` reports nothing (library callers, tests).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Protocol, TextIO

BAR_WIDTH = 24


class Progress(Protocol):
    def phase(self, name: str) -> None:
        """Start the next phase (the previous one is done)."""

    def fraction(self, done: float, detail: str = "") -> None:
        """How far the current phase is, from 0 to 1, with an optional word on what it does."""

    def finish(self, message: str) -> None:
        """All phases done: say so."""


class Silent:
    def phase(self, name: str) -> None:
        pass

    def fraction(self, done: float, detail: str = "") -> None:
        pass

    def finish(self, message: str) -> None:
        pass


class _Base:
    def __init__(self, phases: int, stream: TextIO) -> None:
        self.phases = phases
        self.stream = stream
        self.index = 0
        self.name = ""
        self.started = time.monotonic()

    def _prefix(self) -> str:
        return f"[{self.index}/{self.phases}] {self.name}"

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60}:{seconds % 60:02d}"


class Lines(_Base):
    """Plain lines, for logs: one per phase, and a percentage at each new quarter."""

    def __init__(self, phases: int, stream: TextIO) -> None:
        super().__init__(phases, stream)
        self._quarter = 0

    def phase(self, name: str) -> None:
        self.index += 1
        self.name = name
        self._quarter = 0
        self.stream.write(f"{self._prefix()}\n")
        self.stream.flush()

    def fraction(self, done: float, detail: str = "") -> None:
        quarter = int(min(max(done, 0.0), 1.0) * 4)
        if 0 < quarter < 4 and quarter > self._quarter:
            self._quarter = quarter
            self.stream.write(f"{self._prefix()}: {quarter * 25}%\n")
            self.stream.flush()

    def finish(self, message: str) -> None:
        self.stream.write(f"{message} ({self._elapsed()})\n")
        self.stream.flush()


class Bar(_Base):
    """One line redrawn in place: ``[3/7] phase  [#####-----]  42%  1:05  detail``."""

    def __init__(self, phases: int, stream: TextIO) -> None:
        super().__init__(phases, stream)
        self._done = 0.0
        self._detail = ""
        self._width = 0

    def phase(self, name: str) -> None:
        if self.index:
            self._draw(1.0, "")
            self.stream.write("\n")
        self.index += 1
        self.name = name
        self._draw(0.0, "")

    def fraction(self, done: float, detail: str = "") -> None:
        self._draw(min(max(done, 0.0), 1.0), detail or self._detail)

    def finish(self, message: str) -> None:
        if self.index:
            self._draw(1.0, "")
            self.stream.write("\n")
        self.stream.write(f"{message} ({self._elapsed()})\n")
        self.stream.flush()

    def _draw(self, done: float, detail: str) -> None:
        self._done, self._detail = done, detail
        filled = int(done * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        line = f"{self._prefix():<36} [{bar}] {int(done * 100):3d}%  {self._elapsed()}"
        if detail:
            line += f"  {detail}"
        line = line[: _columns() - 1]
        # Pad over what a longer previous line left on the screen.
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()


def _columns() -> int:
    try:
        return max(os.get_terminal_size(sys.stderr.fileno()).columns, 40)
    except (OSError, ValueError):
        return 100


def for_stream(phases: int, stream: TextIO | None = None) -> Progress:
    """A bar when ``stream`` (default stderr) is a terminal, plain lines otherwise."""
    out = stream if stream is not None else sys.stderr
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    return Bar(phases, out) if tty else Lines(phases, out)
