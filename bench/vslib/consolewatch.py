"""A guest's console file watched in the background for the lines that mark its boot.

Both stacks of ``bench/vs_create.py`` write the serial console to a file (qumrand's
console.log, libvirt's ``<serial type='file'>``); the same watcher, with the same poll,
reads both, so its delay cancels out of the comparison.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from vslib.guest import CLOUD_INIT_DONE
from vslib.measure import POLL, now

# phase -> what marks it on the console
MARKS: dict[str, re.Pattern[bytes]] = {
    "console": re.compile(rb"\n"),  # the first whole line
    "login_prompt": re.compile(rb"login: "),
    "cloud_init_done": CLOUD_INIT_DONE,
}
KEEP = 512  # bytes of the previous read kept, so a mark split across two reads is found


def scan(window: bytes, pending: dict[str, re.Pattern[bytes]]) -> list[str]:
    """The phases in ``pending`` whose mark is in ``window``."""
    return [phase for phase, mark in pending.items() if mark.search(window)]


class ConsoleWatch:
    """Polls ``path`` (which may not exist yet) from now on; :meth:`times` says, for
    each phase seen, the seconds from ``t0`` until it was first seen."""

    def __init__(self, path: Path, t0: float) -> None:
        self.path = path
        self.t0 = t0
        self._seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def times(self) -> dict[str, float]:
        return dict(self._seen)

    def wait_for(self, phase: str, timeout: float) -> bool:
        """Whether ``phase`` was seen within ``timeout`` seconds from now."""
        deadline = now() + timeout
        while phase not in self._seen and self._thread.is_alive() and now() < deadline:
            time.sleep(POLL)
        return phase in self._seen

    def _run(self) -> None:
        offset, tail = 0, b""
        pending = dict(MARKS)
        while pending and not self._stop.wait(POLL):
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            if not chunk:
                continue
            seen = now()
            offset += len(chunk)
            window = tail + chunk
            for phase in scan(window, pending):
                self._seen[phase] = seen - self.t0
                del pending[phase]
            tail = window[-KEEP:]
