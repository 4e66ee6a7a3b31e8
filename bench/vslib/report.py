"""The markdown section of BENCHMARKS.md: one table, the targets checked, then the details.

Each measurement is either a number or the reason it could not be taken (a string), so a
stack that fails still yields a report that says what happened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vslib.measure import Timing, median

BEGIN = "<!-- vs_libvirt:begin -->"
END = "<!-- vs_libvirt:end -->"
YES, NO, UNKNOWN = "✓", "✗", "-"
TO = "\u2013"  # the en dash of a range, as in the rest of BENCHMARKS.md


@dataclass
class Results:
    meta: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    cli: dict[str, dict[str, Timing | str]] = field(default_factory=dict)  # op -> stack -> t
    start: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # stack -> boots
    start_errors: dict[str, str] = field(default_factory=dict)
    rss: dict[str, dict[str, int]] = field(default_factory=dict)  # stack -> process -> KiB
    rss_errors: dict[str, str] = field(default_factory=dict)
    # stack -> {"vms": running VMs, "seconds": window, "cpu": CPU seconds used, "rss": KiB}
    idle: dict[str, dict[str, float]] = field(default_factory=dict)
    idle_errors: dict[str, str] = field(default_factory=dict)
    restart: dict[str, list[float]] = field(default_factory=dict)  # stack -> seconds each
    restart_errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _ms(t: Timing | str) -> str:
    if isinstance(t, str):
        return f"n/a ({t})"
    return f"{t.median * 1000:.1f} ms ({t.minimum * 1000:.1f}{TO}{t.maximum * 1000:.1f})"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else UNKNOWN


def _check(ok: bool | None) -> str:
    return UNKNOWN if ok is None else (YES if ok else NO)


def _cli_label(op: str, vms: str) -> str:
    """``list`` is list --all with the run's VMs defined; ``list@N`` with N defined."""
    if op == "list" or op.startswith("list@"):
        count = op.partition("@")[2] or vms
        return f"`list --all`, {count} defined"
    return {
        "dominfo": "`dominfo NAME`",
        "define": "`define FILE`",
        "undefine": "`undefine NAME`",
    }.get(op, f"`{op}`")


CLI_ORDER = ("list@10", "list", "list@1000", "dominfo", "define", "undefine")


def _cli_rows(res: Results) -> list[str]:
    rows = []
    vms = res.meta.get("vms", "?")
    ops = [op for op in CLI_ORDER if op in res.cli or op == "list"]
    ops += [op for op in res.cli if op not in ops]
    for op in ops:
        times = res.cli.get(op, {})
        q, v = times.get("qumran", "not run"), times.get("libvirt", "not run")
        qm = q.median if isinstance(q, Timing) else None
        vm = v.median if isinstance(v, Timing) else None
        ok = None if qm is None or vm is None else qm <= vm
        runs = q.runs if isinstance(q, Timing) else "?"
        cells = f"{_ms(q)} | {_ms(v)} | {_ratio(qm, vm)} | qumran ≤ virsh | {_check(ok)}"
        rows.append(f"| {_cli_label(op, vms)}: median (range), n={runs} | {cells} |")
    return rows


def start_medians(res: Results) -> dict[str, dict[str, float]]:
    """stack -> what -> the median over the measured boots (only what every boot has)."""
    out: dict[str, dict[str, float]] = {}
    for stack, boots in res.start.items():
        if boots:
            keys = set.intersection(*(set(b) for b in boots))
            out[stack] = {k: median([b[k] for b in boots]) for k in sorted(keys)}
    return out


def _start_rows(res: Results) -> list[str]:
    med = start_medians(res)

    def get(stack: str, what: str) -> float | None:
        return med.get(stack, {}).get(what)

    def cell(stack: str, what: str = "ready") -> str:
        value = get(stack, what)
        if value is not None:
            return f"{value:.3f} s" if what == "ready" else f"{value * 1000:.0f} ms"
        return f"n/a ({res.start_errors.get(stack, 'not run')})"

    def row(label: str, what: str) -> str:
        ratio = _ratio(get("qumran", what), get("libvirt", what))
        return f"| {label} | {cell('qumran', what)} | {cell('libvirt', what)} | {ratio} | | |"

    bare, init = get("bare", "ready"), get("bare", "running")
    q, v = get("qumran", "ready"), get("libvirt", "ready")
    qa = q - bare if q is not None and bare is not None else None
    va = v - bare if v is not None and bare is not None else None
    # The same, from parts that do not include the guest's boot (see the notes).
    qf, qd = get("qumran", "forked"), get("qumran", "delivery")
    qb = qf + qd if qf is not None and qd is not None else None
    vr = get("libvirt", "returned")
    vb = vr - init if vr is not None and init is not None else None
    return [
        row("start → ready line, median", "ready"),
        f"| bare QEMU exec → ready line, median | {cell('bare')} | {cell('bare')} | | | |",
        _added_row("added on top of bare QEMU (difference of medians)", qa, va),
        row("↳ start command → hypervisor forked, median", "forked"),
        row("↳ start command → command returned, median", "returned"),
        f"| ↳ ready line: QEMU wrote it → reader got it, median | {cell('qumran', 'delivery')} "
        "| 0 ms (file read directly) | | | |",
        row("↳ daemon CPU time from start command to ready line, median", "daemon_cpu"),
        f"| ↳ bare QEMU exec → guest running (first QMP reply), median | {cell('bare', 'running')} "
        f"| {cell('bare', 'running')} | | | |",
        _added_row("added before the guest runs + console delivery (from ↳ rows)", qb, vb),
    ]


def _added_row(label: str, qa: float | None, va: float | None) -> str:
    # A negative "added" is boot noise, not a stack faster than QEMU: no verdict then.
    unresolved = qa is None or va is None or va <= 0
    ok = None if unresolved else (qa or 0.0) <= 0.5 * (va or 0.0)
    ratio = UNKNOWN if unresolved or (qa or 0.0) < 0 else _ratio(qa, va)
    return (
        f"| {label} | {_signed(qa)} | {_signed(va)} | {ratio} | qumran ≤ ½ libvirt | {_check(ok)} |"
    )


def _signed(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value * 1000:+.0f} ms"


def _rss_rows(res: Results) -> list[str]:
    def total(stack: str) -> int | None:
        procs = res.rss.get(stack)
        return sum(procs.values()) if procs else None

    def cell(stack: str) -> str:
        procs = res.rss.get(stack)
        if not procs:
            return f"n/a ({res.rss_errors.get(stack, 'not run')})"
        parts = " + ".join(f"{name} {kib / 1024:.1f}" for name, kib in procs.items())
        many = len(procs) > 1
        return f"{(total(stack) or 0) / 1024:.1f} MiB" + (f" ({parts})" if many else "")

    q, v = total("qumran"), total("libvirt")
    ok = None if q is None or v is None else q <= v
    return [
        f"| daemon RSS, idle, {res.meta.get('vms', '?')} defined + 1 running "
        f"| {cell('qumran')} | {cell('libvirt')} "
        f"| {_ratio(q, v)} | qumran ≤ libvirt | {_check(ok)} |"
    ]


def _idle_rows(res: Results) -> list[str]:
    """CPU of the idle daemons per running VM, their memory then, and restart times."""

    def percent(stack: str) -> float | None:
        i = res.idle.get(stack)
        return i["cpu"] / i["seconds"] * 100 if i and i["seconds"] else None

    def cpu_cell(stack: str) -> str:
        i, p = res.idle.get(stack), percent(stack)
        if not i or p is None:
            return f"n/a ({res.idle_errors.get(stack, 'not run')})"
        ticks = round(i["cpu"] * 100)
        return f"{p:.3f} % ({ticks} ticks in {i['seconds']:.0f} s, {i['vms']:.0f} VMs)"

    rows = []
    q, v = percent("qumran"), percent("libvirt")
    n = res.idle.get("qumran", {}).get("vms", 0)
    ok = None if q is None or not n else q <= 0.01 * n
    rows.append(
        f"| daemon CPU, idle, guests running, % of a CPU | {cpu_cell('qumran')} "
        f"| {cpu_cell('libvirt')} | {_ratio(q, v) if v else UNKNOWN} "
        f"| qumran ≤ 0.01 % per VM | {_check(ok)} |"
    )
    if "fake" in res.idle or "fake" in res.idle_errors:
        f = percent("fake")
        n = res.idle.get("fake", {}).get("vms", 0)
        ok = None if f is None or not n else f <= 0.01 * n
        rows.append(
            f"| qumrand CPU, idle, fake driver's stand-in VMs, % of a CPU | {cpu_cell('fake')} "
            f"| not measured (would take as many real guests) | | qumran ≤ 0.01 % per VM "
            f"| {_check(ok)} |"
        )
    qr = res.idle.get("qumran", {}).get("rss")
    vr = res.idle.get("libvirt", {}).get("rss")
    if qr or vr:
        ok = None if not qr or not vr else qr <= vr
        qc = f"{qr / 1024:.1f} MiB" if qr else "n/a"
        vc = f"{vr / 1024:.1f} MiB" if vr else "n/a"
        verdict = f"{_ratio(qr, vr)} | qumran ≤ libvirt | {_check(ok)}"
        rows.append(f"| daemon RSS then | {qc} | {vc} | {verdict} |")
    for stack in ("qumran", "libvirt"):
        if stack not in res.restart and stack not in res.restart_errors:
            return rows
    qt, vt = res.restart.get("qumran"), res.restart.get("libvirt")

    def restart_cell(stack: str, times: list[float] | None) -> str:
        if not times:
            return f"n/a ({res.restart_errors.get(stack, 'not run')})"
        return (
            f"{median(times) * 1000:.0f} ms ({min(times) * 1000:.0f}{TO}{max(times) * 1000:.0f}), "
            f"n={len(times)}"
        )

    qm = median(qt) if qt else None
    vm = median(vt) if vt else None
    ok = None if qm is None else qm <= 0.150
    rows.append(
        f"| daemon restarted with the guests running: exec → first full `list`, median (range) "
        f"| {restart_cell('qumran', qt)} | {restart_cell('libvirt', vt)} | {_ratio(qm, vm)} "
        f"| qumran ≤ 150 ms | {_check(ok)} |"
    )
    return rows


def render(res: Results) -> str:
    m = res.meta
    versions = ", ".join(f"{k} {v}" for k, v in res.versions.items())
    lines = [
        "## Qumran vs libvirt",
        "",
        f"`{m.get('command', '.venv/bin/python bench/vs_libvirt.py')}` — {m.get('date', '?')}, "
        f"{m.get('mode', '?')}.",
        f"Machine: {m.get('nproc', '?')} CPUs, {m.get('cpu', '?')}, {m.get('os', '?')}; "
        f"load average {m.get('load', '?')}. Guests run under {m.get('accel', '?')}.",
        f"Versions: {versions}.",
        "",
        "| measurement | qumran | libvirt | qumran/libvirt | target | met |",
        "|---|---|---|---|---|---|",
        *_cli_rows(res),
        *_start_rows(res),
        *_rss_rows(res),
        *_idle_rows(res),
        "",
        *_details(res),
    ]
    return "\n".join(lines) + "\n"


def _details(res: Results) -> list[str]:
    m = res.meta
    out = ["Each boot (seconds from the start command):", ""]
    for stack in ("bare", "qumran", "libvirt"):
        boots = res.start.get(stack, [])
        parts = ["; ".join(f"{k} {v:.3f}" for k, v in b.items()) for b in boots]
        out.append(f"- {stack}: " + (" | ".join(parts) or "none"))
    out += ["", "How each number is taken:", ""]
    out += [f"- {note}" for note in res.notes]
    if m.get("raw"):
        out.append(f"- Raw hyperfine JSON: {m['raw']}.")
    return out


def write_section(path: Path, section: str) -> None:
    """Put ``section`` between the markers in ``path``, keeping everything else as it is."""
    block = f"{BEGIN}\n{section}{END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
