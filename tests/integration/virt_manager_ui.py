"""Drives a real virt-manager through its accessibility tree (AT-SPI), as a person would
with the mouse: find each VM's row in the manager window, select one, press Run, watch
its row say Running. Run by Debian's /usr/bin/python3 (python3-pyatspi) inside a D-Bus
session of its own (dbus-run-session), on the X display in $DISPLAY:

    virt_manager_ui.py URI LOG START NAME...

It prints one line per step (``listed``, ``clicked``, ``running``) for the test to follow,
then waits for a line on its standard input (the test's screenshot is taken meanwhile)
before closing virt-manager. Any step that does not happen in time ends it with a message
on stderr and status 1.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyatspi  # type: ignore[import-not-found]

STEP_TIMEOUT = 120.0  # a loaded machine: virt-manager's first window can take a while


def application() -> Any:
    for app in pyatspi.Registry.getDesktop(0):
        if app is not None and app.name == "virt-manager":
            return app
    return None


def walk(node: Any) -> Iterator[Any]:
    yield node
    for child in node:
        if child is not None:
            yield from walk(child)


def wait_for(what: str, test: Callable[[Any], bool]) -> Any:
    """The first node of virt-manager's tree that passes ``test``. The tree is read
    afresh each round: AT-SPI has no event for "a row with this text exists" that would
    also cover rows already there."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        app = application()
        if app is not None:
            for node in walk(app):
                try:
                    if test(node):
                        return node
                except Exception:  # a node that went away while it was read
                    continue
        time.sleep(0.2)
    sys.exit(f"virt-manager: no {what} within {STEP_TIMEOUT:.0f} s")


def row(name: str, state: str) -> Callable[[Any], bool]:
    # A VM's row shows "NAME\nSTATE" in one cell of the "vm-list" tree table.
    return lambda n: n.getRoleName() == "table cell" and n.name == f"{name}\n{state}"


def button(label: str) -> Callable[[Any], bool]:
    return lambda n: (
        n.getRoleName() == "push button"
        and n.name == label
        and n.getState().contains(pyatspi.STATE_SENSITIVE)
    )


def select(cell: Any) -> None:
    """Select the row a cell is in, as a click on it does."""
    table = cell.parent
    while table.getRoleName() != "tree table":
        table = table.parent
    # The name and state share a cell inside the row's own cell; the table indexes rows
    # by the outer one.
    outer = cell.parent if cell.parent.getRoleName() == "table cell" else cell
    iface = table.queryTable()
    number = iface.getRowAtIndex(outer.getIndexInParent())
    if not iface.addRowSelection(number) or not iface.isRowSelected(number):
        sys.exit(f"virt-manager: cannot select the row of {cell.name!r}")


def main() -> None:
    uri, log, start, *names = sys.argv[1:]
    with open(log, "ab") as out:
        manager = subprocess.Popen(
            ["virt-manager", "--debug", "--no-fork", "-c", uri], stdout=out, stderr=out
        )
    try:
        for name in names:
            wait_for(f"row for {name} (Shutoff)", row(name, "Shutoff"))
        print("listed", *names, flush=True)
        select(wait_for(f"row for {start}", row(start, "Shutoff")))
        wait_for("Run button that can be pressed", button("Run")).queryAction().doAction(0)
        print("clicked", flush=True)
        wait_for(f"row for {start} (Running)", row(start, "Running"))
        print("running", flush=True)
        sys.stdin.readline()
    finally:
        manager.terminate()
        manager.wait(timeout=30)


if __name__ == "__main__":
    main()
