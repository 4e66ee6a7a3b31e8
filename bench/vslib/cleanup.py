"""Clean-up that a benchmark owes the machine, whatever stops it."""

from __future__ import annotations

from collections.abc import Callable
from types import FrameType


def interrupt(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM handler: stop the run the way Ctrl-C does, so clean-up callbacks run."""
    raise KeyboardInterrupt


def quietly(
    what: str, action: Callable[[], object], log: Callable[[str], None]
) -> Callable[[], None]:
    """``action`` as a clean-up step that logs its failure with ``log`` and lets the next
    step run."""

    def run() -> None:
        try:
            action()
        except Exception as exc:  # clean-up goes on with the next step
            log(f"clean-up: {what} failed: {exc}")

    return run
