"""The vs_create section of BENCHMARKS.md: the time to a first SSH command and its phases."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vslib.measure import median

BEGIN = "<!-- vs_create:begin -->"
END = "<!-- vs_create:end -->"
TO = "\u2013"
STACKS = ("qumran", "libvirt")


@dataclass
class CreateResults:
    meta: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    runs: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # stack -> runs
    errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# (key, label, unit) of each row after the first; a stack without the key shows why.
PHASES = (
    ("disk", "↳ command → disk made (qumran: its `disk:` line; libvirt: qemu-img returned)",
     "s"),
    ("seed", "↳ command → seed ISO made (libvirt: xorrisofs; qumran: qumrand makes it at start)",
     "s"),
    ("started",
     "↳ command → VM started (qumran: its `started` line; libvirt: virt-install returned)", "s"),
    ("console", "↳ command → first console line", "s"),
    ("login_prompt", "↳ command → `login:` prompt on the console", "s"),
    ("cloud_init_done", "↳ command → cloud-init's `finished at` on the console", "s"),
    ("returned", "↳ command → `qumran create --wait` returned", "s"),
    ("plain_ssh", "↳ command → a plain ssh first got in (qumran: --probe, not counted)", "s"),
    ("ssh_tries", "ssh commands run until one succeeded", "n"),
    ("daemon_cpu", "daemon CPU (qumrand; libvirtd + virtlogd), command → SSH", "cpu"),
    ("client_cpu",
     "client CPU (qumran create + ssh; qemu-img + xorrisofs + virt-install + ssh)", "cpu"),
    ("qemu_cpu", "QEMU's CPU, start → SSH (the guest's TCG work)", "cpu"),
)  # fmt: skip


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """key -> median over the runs that have it."""
    keys = {k for r in runs for k in r}
    return {k: median([r[k] for r in runs if k in r]) for k in sorted(keys)}


def spread(values: list[float]) -> str:
    digits = 1 if median(values) >= 10 else 2  # a step of 0.1 s shows, a boot's tenths do not
    return f"{median(values):.{digits}f} s ({min(values):.{digits}f}{TO}{max(values):.{digits}f})"


def _cell(res: CreateResults, stack: str, key: str, unit: str) -> str:
    runs = res.runs.get(stack) or []
    values = [r[key] for r in runs if key in r]
    if not runs:
        return f"n/a ({res.errors.get(stack, 'not run')})"
    if not values:
        return "-"
    if unit == "n":
        return f"{median(values):.0f} ({min(values):.0f}{TO}{max(values):.0f})"
    if unit == "cpu":
        return f"{median(values):.2f} s"
    return spread(values)


def _ratio(res: CreateResults, key: str) -> str:
    q = [r[key] for r in res.runs.get("qumran", []) if key in r]
    v = [r[key] for r in res.runs.get("libvirt", []) if key in r]
    if not q or not v or median(v) == 0:
        return "-"
    return f"{median(q) / median(v):.2f}"


def render(res: CreateResults) -> str:
    m = res.meta
    n = {s: len(res.runs.get(s, [])) for s in STACKS}
    q, v = (medians(res.runs.get(s, [])).get("ssh") for s in STACKS)
    met = "-" if q is None or v is None else ("✓" if q <= v else "✗")
    lines = [
        "## `qumran create` vs `virt-install --import`: command to first SSH command",
        "",
        f"`{m.get('command', '.venv/bin/python bench/vs_create.py')}` — {m.get('date', '?')}, "
        f"{m.get('mode', '?')}.",
        f"Machine: {m.get('machine', '?')}; load average {m.get('load', '?')}. "
        "Guests run under TCG.",
        f"Versions: {', '.join(f'{k} {val}' for k, val in res.versions.items())}.",
        "",
        "| measurement | qumran | libvirt | qumran/libvirt | target | met |",
        "|---|---|---|---|---|---|",
        f"| command → first successful SSH command: median (range), n={n['qumran']}/{n['libvirt']} "
        f"| {_cell(res, 'qumran', 'ssh', 's')} | {_cell(res, 'libvirt', 'ssh', 's')} "
        f"| {_ratio(res, 'ssh')} | qumran ≤ libvirt | {met} |",
    ]
    for key, label, unit in PHASES:
        if not any(key in r for s in STACKS for r in res.runs.get(s, [])):
            continue
        lines.append(
            f"| {label} | {_cell(res, 'qumran', key, unit)} | {_cell(res, 'libvirt', key, unit)} "
            f"| {_ratio(res, key) if unit != 'n' else ''} | | |"
        )
    lines += ["", "Each run (seconds from the command):", ""]
    for stack in STACKS:
        parts = [
            "; ".join(f"{k} {val:.2f}" for k, val in r.items()) for r in res.runs.get(stack, [])
        ]
        lines.append(f"- {stack}: " + (" | ".join(parts) or res.errors.get(stack, "none")))
    lines += ["", "How each number is taken:", ""]
    lines += [f"- {note}" for note in res.notes]
    return "\n".join(lines) + "\n"


def write_between(path: Path, begin: str, end: str, section: str) -> None:
    """Put ``section`` between the ``begin`` and ``end`` markers in ``path`` (appended with
    its markers when they are not there yet), keeping the rest of the file as it is."""
    block = f"{begin}\n{section}{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
