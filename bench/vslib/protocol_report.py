"""The markdown section of BENCHMARKS.md for vs_libvirt_protocol.py: the same libvirt
client against qumrand's libvirt-sock and against libvirtd, one table, then the details.

Each measurement is either numbers or the reason it could not be taken (a string), so a
procedure one server does not have still yields a row that says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vslib.measure import Timing, median

BEGIN = "<!-- vs_libvirt_protocol:begin -->"
END = "<!-- vs_libvirt_protocol:end -->"
SERVERS = ("qumrand", "libvirtd")
YES, NO, UNKNOWN = "✓", "✗", "-"
TO = "\u2013"


@dataclass
class Samples:
    """Per-call times (seconds) of one in-process client call, over every round."""

    times: list[float]

    @property
    def median(self) -> float:
        return median(self.times)


@dataclass
class ProtocolResults:
    meta: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    # op -> server -> a hyperfine timing, per-call samples, or why there is none
    rows: dict[str, dict[str, Timing | Samples | str]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # op -> what the row measures
    notes: list[str] = field(default_factory=list)


def _cell(t: Timing | Samples | str) -> str:
    if isinstance(t, str):
        return f"n/a ({t})"
    if isinstance(t, Timing):
        low, mid, high, n = t.minimum, t.median, t.maximum, t.runs
    else:
        low, mid, high, n = min(t.times), t.median, max(t.times), len(t.times)
    return f"{mid * 1000:.2f} ms ({low * 1000:.2f}{TO}{high * 1000:.2f}), n={n}"


def _median(t: Timing | Samples | str) -> float | None:
    return None if isinstance(t, str) else t.median


def render(res: ProtocolResults) -> str:
    m = res.meta
    rows = []
    for op, by_server in res.rows.items():
        q = by_server.get("qumrand", "not run")
        v = by_server.get("libvirtd", "not run")
        qm, vm = _median(q), _median(v)
        ratio = f"{qm / vm:.2f}" if qm is not None and vm else UNKNOWN
        met = UNKNOWN if qm is None or vm is None else (YES if qm <= vm else NO)
        label = res.labels.get(op, op)
        rows.append(f"| {label} | {_cell(q)} | {_cell(v)} | {ratio} | qumrand ≤ libvirtd | {met} |")
    versions = ", ".join(f"{k} {v}" for k, v in res.versions.items())
    lines = [
        "## libvirt's clients: qumrand's libvirt-sock vs libvirtd",
        "",
        f"`{m.get('command', '?')}` — {m.get('date', '?')}, {m.get('mode', '?')}.",
        f"Machine: {m.get('nproc', '?')} CPUs, {m.get('cpu', '?')}, {m.get('os', '?')}; "
        f"load average {m.get('load', '?')}.",
        f"Versions: {versions}.",
        "",
        f"| measurement: median (min{TO}max) | qumrand | libvirtd | qumrand/libvirtd | target "
        "| met |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "How each number is taken:",
        "",
        *(f"- {note}" for note in res.notes),
    ]
    return "\n".join(lines) + "\n"


def write_between(path: Path, section: str) -> None:
    """Put ``section`` between this benchmark's markers, keeping the rest of the file."""
    block = f"{BEGIN}\n{section}{END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
