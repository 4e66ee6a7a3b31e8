"""vs_libvirt_protocol's report: rows, verdicts, a server without the procedure, markers.

Run: .venv/bin/pytest bench/vslib  (no libvirt, QEMU or daemon needed)
"""

from __future__ import annotations

from pathlib import Path

from vslib.measure import Timing
from vslib.protocol_report import (
    BEGIN,
    END,
    TO,
    ProtocolResults,
    Samples,
    render,
    write_between,
)


def sample() -> ProtocolResults:
    res = ProtocolResults(meta={"mode": "full run"})
    res.labels = {"list": "`virsh list --all`", "stats": "getAllDomainStats"}
    res.rows = {
        "list": {
            "qumrand": Samples([0.010, 0.012, 0.030]),
            "libvirtd": Timing(0.02, 0.0, 0.02, 0.015, 0.05, 30),
        },
        "stats": {"qumrand": "not supported", "libvirtd": Samples([0.001])},
    }
    return res


def test_rows_give_medians_ranges_and_the_verdict() -> None:
    text = render(sample())
    assert (
        f"| `virsh list --all` | 12.00 ms (10.00{TO}30.00), n=3 | 20.00 ms (15.00{TO}50.00), "
        "n=30 | 0.60 | qumrand ≤ libvirtd | ✓ |"
    ) in text
    assert f"| getAllDomainStats | n/a (not supported) | 1.00 ms (1.00{TO}1.00), n=1 | - |" in text


def test_the_section_replaces_only_its_own_markers(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\nkept\n\n{BEGIN}\nold\n{END}\n\nalso kept\n")
    write_between(path, "new\n")
    assert path.read_text() == f"# Benchmarks\n\nkept\n\n{BEGIN}\nnew\n{END}\n\nalso kept\n"
    write_between(tmp_path / "none.md", "first\n")
    assert (tmp_path / "none.md").read_text() == f"# Benchmarks\n\n{BEGIN}\nfirst\n{END}\n"
