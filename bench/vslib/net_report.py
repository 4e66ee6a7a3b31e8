"""The vs_network section of BENCHMARKS.md: throughput, latency, link and lease, net-start.

Every value is kept per run; a row shows the median and (min to max) over the runs, and a
measurement that could not be taken shows why instead of a number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vslib.measure import Timing, median

BEGIN = "<!-- vs_network:begin -->"
END = "<!-- vs_network:end -->"
STACKS = ("qumran", "libvirt")
TO = "\u2013"
YES, NO, UNKNOWN = "✓", "✗", "-"

# (key, label, unit, better): per-round traffic measurements; better: "high" or "low".
TRAFFIC = (
    ("vm_vm_bps", "VM → VM TCP throughput (iperf3, guest to guest)", "bps", "high"),
    ("vm_host_bps", "VM → host TCP throughput (iperf3, guest to the bridge's address)", "bps",
     "high"),
    ("host_vm_bps", "host → VM TCP throughput (iperf3, the bridge's namespace to a guest)",
     "bps", "high"),
    ("vm_vm_rtt", "VM → VM round trip (busybox ping in a guest), median of each run's pings",
     "rtt", "low"),
    ("host_vm_rtt", "host → VM round trip (ping in the bridge's namespace), median of each "
     "run's pings", "rtt", "low"),
)  # fmt: skip
# (key, label): per-boot times, seconds from the start command unless said otherwise.
BOOT = (
    ("returned", "start command → command returned"),
    ("tap_up", "start command → the VM's TAP up in the bridge (host side, `ip monitor`)"),
    ("link", "start command → guest sees eth0's carrier (console line)"),
    ("lease", "start command → guest configured its first DHCP lease (console line)"),
    ("dhcp", "↳ the guest's DHCP exchange: carrier → lease, on the guest's clock"),
)


@dataclass
class NetResults:
    meta: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    net_start: dict[str, Timing | str] = field(default_factory=dict)  # stack -> timing
    boots: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # stack -> boots
    traffic: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # stack -> k -> runs
    errors: dict[str, str] = field(default_factory=dict)  # stack -> why it stopped
    nic_args: dict[str, str] = field(default_factory=dict)  # stack -> QEMU's NIC arguments
    notes: list[str] = field(default_factory=list)


def within_noise(mine: list[float], theirs: list[float], better: str) -> bool | None:
    """Qumran's median no worse than libvirt's, or inside the range of libvirt's own runs
    (the run-to-run noise of the same measurement); None without numbers on both sides."""
    if not mine or not theirs:
        return None
    m, t = median(mine), median(theirs)
    no_worse = m >= t if better == "high" else m <= t
    return no_worse or min(theirs) <= m <= max(theirs)


def _fmt(value: float, unit: str) -> str:
    if unit == "bps":
        return f"{value / 1e6:.0f}"
    if unit == "rtt":
        return f"{value * 1000:.2f}"
    return f"{value * 1000:.0f}"  # seconds shown in ms


UNITS = {"bps": "Mbit/s", "rtt": "ms", "s": "ms"}


def _cell(values: list[float], unit: str, why: str) -> str:
    if not values:
        return f"n/a ({why})"
    mid, lo, hi = median(values), min(values), max(values)
    return f"{_fmt(mid, unit)} {UNITS[unit]} ({_fmt(lo, unit)}{TO}{_fmt(hi, unit)})"


def _ratio(mine: list[float], theirs: list[float]) -> str:
    if not mine or not theirs or median(theirs) == 0:
        return UNKNOWN
    return f"{median(mine) / median(theirs):.2f}"


def _check(ok: bool | None) -> str:
    return UNKNOWN if ok is None else (YES if ok else NO)


def _row(res: NetResults, label: str, q: list[float], v: list[float], unit: str,
         better: str | None) -> str:  # fmt: skip
    why = {s: res.errors.get(s, "not run") for s in STACKS}
    n = f"n={len(q)}/{len(v)}"
    target, met = "", ""
    if better is not None:
        target = "= libvirt within noise"
        met = _check(within_noise(q, v, better))
    return (
        f"| {label}: median (range), {n} | {_cell(q, unit, why['qumran'])} "
        f"| {_cell(v, unit, why['libvirt'])} | {_ratio(q, v)} | {target} | {met} |"
    )


def _net_start_row(res: NetResults) -> str:
    q, v = res.net_start.get("qumran", "not run"), res.net_start.get("libvirt", "not run")

    def cell(t: Timing | str) -> str:
        if isinstance(t, str):
            return f"n/a ({t})"
        return f"{t.median * 1000:.0f} ms ({t.minimum * 1000:.0f}{TO}{t.maximum * 1000:.0f})"

    ok = None
    ratio = UNKNOWN
    if isinstance(q, Timing) and isinstance(v, Timing):
        ok = q.median <= v.median
        ratio = f"{q.median / v.median:.2f}"
    runs = q.runs if isinstance(q, Timing) else (v.runs if isinstance(v, Timing) else "?")
    return (
        f"| `net-start` of the NAT network with DHCP: median (range), n={runs} | {cell(q)} "
        f"| {cell(v)} | {ratio} | qumran ≤ libvirt | {_check(ok)} |"
    )


def render(res: NetResults) -> str:
    m = res.meta
    lines = [
        "## Virtual networks: Qumran's NAT network vs libvirt's default network",
        "",
        f"`{m.get('command', 'PYTHONPATH=src .venv/bin/python bench/vs_network.py')}` — "
        f"{m.get('date', '?')}, {m.get('mode', '?')}.",
        f"Machine: {m.get('machine', '?')}; load average {m.get('load', '?')}. Guests run "
        "under TCG (no usable KVM on this host): the guests' own CPU bounds every throughput "
        "below, the same for both stacks (same guest, same QEMU, same host).",
        f"Versions: {', '.join(f'{k} {val}' for k, val in res.versions.items())}.",
        "",
        "| measurement | qumran | libvirt | qumran/libvirt | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, unit, better in TRAFFIC:
        q = res.traffic.get("qumran", {}).get(key, [])
        v = res.traffic.get("libvirt", {}).get(key, [])
        lines.append(_row(res, label, q, v, unit, better))
    for key, label in BOOT:
        q = [b[key] for b in res.boots.get("qumran", []) if key in b]
        v = [b[key] for b in res.boots.get("libvirt", []) if key in b]
        goal = "low" if key in ("tap_up", "link", "lease") else None
        lines.append(_row(res, label, q, v, "s", goal))
    lines.append(_net_start_row(res))
    lines += ["", "Each run:", ""]
    for stack in STACKS:
        traffic = res.traffic.get(stack, {})
        parts = [
            f"{key} " + ", ".join(_fmt(x, unit) for x in traffic[key])
            for key, _, unit, _ in TRAFFIC
            if traffic.get(key)
        ]
        boots = [
            "; ".join(f"{k} {val:.3f}" for k, val in b.items()) for b in res.boots.get(stack, [])
        ]
        lines.append(
            f"- {stack}: traffic (Mbit/s, ms) " + (" | ".join(parts) or "none")
            + "; boots (s) " + (" | ".join(boots) or "none")
            + (f"; stopped: {res.errors[stack]}" if stack in res.errors else "")
        )  # fmt: skip
    lines += ["", "How each number is taken:", ""]
    lines += [f"- {note}" for note in res.notes]
    for stack in STACKS:
        if stack in res.nic_args:
            lines.append(f"- {stack}'s QEMU NIC arguments (from its command line), two guests up: "
                         f"`{res.nic_args[stack]}`.")  # fmt: skip
    return "\n".join(lines) + "\n"
