"""vs_network's pure parts: what the guest and the tools print, verdicts, the section.

Run: .venv/bin/pytest bench/vslib/test_net.py  (no namespace, daemon or guest needed)
"""

from __future__ import annotations

import gzip
from pathlib import Path

from vslib import netguest
from vslib.measure import Timing
from vslib.net_report import TO, NetResults, render, within_noise

LDD = """\tlinux-vdso.so.1 (0x00007ffd)
\tlibiperf.so.0 => /lib/x86_64-linux-gnu/libiperf.so.0 (0x00007fb1)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fb2)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fb3)
"""


def test_ldd_output_gives_the_files_to_copy_and_skips_the_vdso() -> None:
    assert netguest.parse_ldd(LDD) == [
        Path("/lib/x86_64-linux-gnu/libiperf.so.0"),
        Path("/lib/x86_64-linux-gnu/libc.so.6"),
        Path("/lib64/ld-linux-x86-64.so.2"),
    ]


def test_console_lines_are_found_among_other_output() -> None:
    text = (
        "[    1.2] virtio_net virtio0 eth0: renamed\nBENCH-LINK 2.51\nudhcpc: started\n"
        "BENCH-LEASE 5.98 192.168.122.57\r\nbench:/# BENCH-UP 6.10\n"
    )
    assert netguest.console_lines(text) == [
        netguest.ConsoleLine("BENCH-LINK", 2.51),
        netguest.ConsoleLine("BENCH-LEASE", 5.98, "192.168.122.57"),
        netguest.ConsoleLine("BENCH-UP", 6.10),
    ]


def test_ping_times_from_iputils_and_busybox() -> None:
    iputils = "64 bytes from 192.168.122.5: icmp_seq=1 ttl=64 time=0.712 ms\n"
    busybox = "64 bytes from 192.168.122.6: seq=0 ttl=64 time=12 ms\nround-trip min/avg/max\n"
    assert netguest.ping_rtts(iputils + busybox) == [0.000712, 0.012]


def test_iperf_receiver_rate_and_its_errors() -> None:
    doc = '{"start": {}, "end": {"sum_received": {"bits_per_second": 3.5e8}}}'
    assert netguest.iperf_bps("noise before\n" + doc + "\n") == 3.5e8
    for bad in ('{"error": "unable to connect to server"}', "iperf3: error"):
        try:
            netguest.iperf_bps(bad)
        except ValueError as exc:
            assert "connect" in str(exc) or "no JSON" in str(exc)
        else:
            raise AssertionError(f"{bad!r} gave a rate")


def test_the_bench_archive_holds_iperf3_and_replaces_the_demo_inittab(tmp_path: Path) -> None:
    binary = Path("/bin/true")  # any dynamic binary: ldd gives its libraries
    archive = netguest.extra_archive(binary).to_bytes()
    for name in (b"bin/true", b"bench/boot.sh", b"bench/dhcp.sh", b"etc/inittab", b"libc.so.6"):
        assert name in archive
    assert b"::once:/bench/boot.sh" in archive
    demo = tmp_path / "demo.img"
    demo.write_bytes(gzip.compress(b"demo archive"))
    out = netguest.build_initrd(demo, binary, tmp_path / "bench.img")
    assert out.read_bytes().startswith(demo.read_bytes())  # concatenated, demo first


def test_within_noise_is_no_worse_or_inside_libvirts_own_range() -> None:
    assert within_noise([300e6], [280e6, 290e6], "high")  # better
    assert within_noise([250e6], [240e6, 300e6, 310e6], "high")  # worse, inside the range
    assert not within_noise([200e6], [240e6, 300e6], "high")
    assert within_noise([0.0009], [0.0007, 0.0010], "low")
    assert not within_noise([0.0012], [0.0007, 0.0010], "low")
    assert within_noise([], [1.0], "low") is None


def test_render_shows_numbers_verdicts_and_why_a_stack_has_none() -> None:
    res = NetResults()
    res.traffic = {
        "qumran": {"vm_vm_bps": [300e6, 310e6]},
        "libvirt": {"vm_vm_bps": [290e6, 320e6]},
    }
    res.boots = {"qumran": [{"lease": 3.2, "tap_up": 0.03}], "libvirt": []}
    res.errors = {"libvirt": "libvirtd does not answer"}
    res.net_start = {
        "qumran": Timing(0.11, 0.01, 0.11, 0.10, 0.13, 10),
        "libvirt": Timing(0.16, 0.01, 0.16, 0.15, 0.19, 10),
    }
    text = render(res).replace(TO, "-")
    assert (
        "| 305 Mbit/s (300-310) | 305 Mbit/s (290-320) | 1.00 | = libvirt within noise | ✓ |"
        in (text)
    )
    assert "3200 ms (3200-3200) | n/a (libvirtd does not answer)" in text
    assert "| 110 ms (100-130) | 160 ms (150-190) | 0.69 | qumran ≤ libvirt | ✓ |" in text
