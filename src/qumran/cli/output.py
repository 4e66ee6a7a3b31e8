"""Formatting for people (virsh-like tables and key: value lines) and for scripts (JSON)."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing stays out of the CLI's fast path
if TYPE_CHECKING:
    from collections.abc import Sequence

    from qumran.client.schema import Event, HostInfo, Sample, VmInfo

WIDTH = 80  # what people's output fits (a table's columns aside, which are as long as needed)

# virsh's words for the states whose API names read oddly in a table.
_STATE_WORDS = {"shutoff": "shut off", "shutdown": "in shutdown"}


def print_json(doc: object) -> None:
    import json  # only here: json imports re, ~4 ms the table output does without

    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def state_word(state: str) -> str:
    return _STATE_WORDS.get(state, state)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table in virsh's layout: a leading space, 3 spaces between columns, a rule."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return " " + "   ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    rule = "-" * (1 + sum(widths) + 3 * (len(widths) - 1) + 2)  # as long as virsh's
    return "\n".join([line(headers), rule, *(line(r) for r in rows)]) + "\n"


def vm_table(vms: Sequence[VmInfo]) -> str:
    rows = [
        ["-" if vm.get("pid") is None else str(vm["pid"]), vm["name"], state_word(vm["state"])]
        for vm in vms
    ]
    return table(["Id", "Name", "State"], rows)


def key_values(pairs: Sequence[tuple[str, str]]) -> str:
    return "".join(f"{(key + ':').ljust(15)} {value}\n" for key, value in pairs)


def dominfo(vm: VmInfo) -> str:
    cpu_time = vm.get("cpu_time")
    return key_values(
        [
            ("Name", vm["name"]),
            ("UUID", vm.get("uuid", "-")),
            ("Owner", user_label(vm["owner"])),
            ("Hypervisor", vm.get("hypervisor", "-")),
            ("State", state_word(vm["state"])),
            ("Reason", vm.get("reason") or "-"),
            ("PID", "-" if vm.get("pid") is None else str(vm["pid"])),
            ("CPU(s)", str(vm.get("vcpus", "-"))),
            ("Max memory", f"{vm['memory_mib']} MiB" if "memory_mib" in vm else "-"),
            ("CPU time", "-" if cpu_time is None else f"{cpu_time:.1f}s"),
            ("Autostart", "enable" if vm.get("autostart") else "disable"),
        ]
    )


def host(info: HostInfo) -> str:
    head = key_values(
        [
            ("Hostname", info.get("hostname", "-")),
            ("Version", info.get("version", "-")),
            ("UID", user_label(info["uid"]) if "uid" in info else "-"),
        ]
    )
    drivers = info.get("drivers", [])
    rows = [
        [
            d.get("driver", "?"),
            d.get("accelerator", "-"),
            "yes" if d.get("available", True) else "no",
            d.get("version", "-") or "-",
        ]
        for d in drivers
    ]
    text = head + "\n" + table(["Driver", "Accelerator", "Available", "Version"], rows)
    # Each reason is a sentence: under the table, wrapped, so the whole fits 80 columns.
    reasons = [(d.get("driver", "?") + ":", d.get("reason", "")) for d in drivers]
    if any(reason for _, reason in reasons):
        indent = max(len(label) for label, _ in reasons) + 2
        text += "\n" + "".join(hanging(label, reason, indent) for label, reason in reasons)
    return text


def hanging(label: str, text: str, indent: int, width: int = WIDTH) -> str:
    """``label`` then ``text`` wrapped to ``width``, continuation lines under the text."""
    import textwrap

    lines = textwrap.wrap(text or "-", width - 1 - indent, break_on_hyphens=False) or [""]
    first = " " + label.ljust(indent) + lines[0] + "\n"
    return first + "".join(" " * (1 + indent) + line + "\n" for line in lines[1:])


def event_line(ev: Event) -> str:
    import time  # only here: `qumran list` does without

    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.get("time", 0)))
    state = state_word(ev.get("state", ""))
    reason = ev.get("reason")
    text = f"{stamp}  {ev.get('vm', '-')}  {ev.get('event', '?')}  {state}"
    text += f" ({reason})" if reason else ""
    detail = ev.get("detail")
    return text + (f"  {detail}" if detail else "") + "\n"


def user_label(uid: int) -> str:
    import pwd

    try:
        return f"{uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, TypeError, OverflowError):
        return str(uid)


def _bytes(value: object) -> str:
    if not isinstance(value, int):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def domstats(name: str, samples: list[Sample]) -> str:
    """The latest sample, in the spirit of `virsh domstats`."""
    if not samples:
        return f"{name}: no samples yet (the VM is not running, or has just started)\n"
    last = samples[-1]
    rows = [
        ("cpu.percent", f"{last['cpu_percent']}"),
        ("memory.rss", _bytes(last["rss_bytes"])),
        ("block.read", _bytes(last["disk_read_bytes"])),
        ("block.written", _bytes(last["disk_write_bytes"])),
        ("net.rx", _bytes(last["net_rx_bytes"])),
        ("net.tx", _bytes(last["net_tx_bytes"])),
        ("samples", f"{len(samples)} over {last['t'] - samples[0]['t']:.0f} s"),
    ]
    return f"Domain: '{name}'\n" + "".join(f"  {k}={v}\n" for k, v in rows)
