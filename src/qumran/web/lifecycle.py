"""Which lifecycle actions the pages offer in each state, and how they word times and sizes.

As Cockpit's Machines page does: one primary button per state (the thing a person most
likely wants next) and a menu with the other actions that state allows. The table
mirrors what the Manager accepts (``Manager.shutdown`` refuses a paused VM, ``undefine``
an active one, ...); the daemon still decides, so a stale page gets the daemon's refusal.
The table goes to the browser as JSON (app.js rearranges the buttons on a state change),
so the server's first rendering and the live one cannot disagree.
"""

from __future__ import annotations

from typing import Any

LABELS = {
    "start": "Start", "shutdown": "Shut down", "reboot": "Reboot", "suspend": "Pause",
    "resume": "Resume", "reset": "Reset", "destroy": "Force off", "undefine": "Delete",
}  # fmt: skip
# Shown before the action runs (a window.confirm), for the ones that cost something.
CONFIRM = {
    "shutdown": "Shut down {name}? The guest is asked to power off.",
    "reboot": "Reboot {name}? The guest is sent Ctrl-Alt-Del and reboots itself.",
    "reset": "Reset {name}? Like pressing the reset button: unsaved data in the guest is lost.",
    "destroy": "Force off {name}? Like pulling the plug: unsaved data in the guest is lost.",
    "undefine": "Delete the definition of {name}? Its disk images are kept.",
}
DANGER = frozenset({"reset", "destroy", "undefine"})
ORDER = ("start", "shutdown", "reboot", "suspend", "resume", "reset", "destroy", "undefine")

PRIMARY = {
    "shutoff": "start",
    "running": "shutdown",
    "paused": "resume",
    "shutdown": "destroy",  # the guest is powering off; if it does not, pull the plug
    "crashed": "destroy",  # its process stays until destroyed
}
VALID = {
    "shutoff": ("start", "undefine"),
    "running": ("shutdown", "reboot", "suspend", "reset", "destroy"),
    "paused": ("resume", "reboot", "reset", "destroy"),
    "shutdown": ("destroy", "reset"),
    "crashed": ("destroy", "reset"),
}


def action_table() -> dict[str, Any]:
    return {"primary": PRIMARY, "valid": {s: list(a) for s, a in VALID.items()}}


def primary(state: str) -> str:
    return PRIMARY.get(state, "destroy")


def valid(state: str) -> tuple[str, ...]:
    return VALID.get(state, ("destroy",))


def duration(seconds: float) -> str:
    """An uptime as people say it: "45 s", "12 min", "3 h 5 min", "2 d 4 h"."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if hours == 0:
        return f"{minutes} min"
    if days == 0:
        rest = minutes % 60
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    rest = hours % 24
    return f"{days} d {rest} h" if rest else f"{days} d"


def mebibytes(mib: int) -> str:
    """A memory size: "256 MiB", "1 GiB", "1.5 GiB"."""
    if mib < 1024:
        return f"{mib} MiB"
    gib = mib / 1024
    return f"{gib:.0f} GiB" if gib == int(gib) else f"{gib:.1f} GiB"


def size(nbytes: int) -> str:
    """A disk size: "512 B", "64 MiB", "8 GiB", "1.5 GiB" (exact bytes are in the API)."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{nbytes} B"
    return f"{value:.0f} {unit}" if value == int(value) or value >= 100 else f"{value:.1f} {unit}"
