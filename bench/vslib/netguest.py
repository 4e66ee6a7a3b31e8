"""The guest of ``bench/vs_network.py`` and what it prints: the demo guest plus iperf3.

The bench initramfs is the demo guest's (``qumran.images.demo.build_demo``) with a second
archive appended (the kernel unpacks concatenated archives in order, later entries
replacing earlier ones): the host's own iperf3 with the shared libraries ``ldd`` names,
and a boot script that brings eth0 up, asks for a lease (busybox udhcpc), starts
``iperf3 -s`` and a control port, and says each step on the serial console. Nothing is
typed on the console, so both stacks drive the guest the same way: over the network, from
inside the namespace the guest's bridge lives in.

The parsers at the end are pure: what a console line, a ping run and iperf3's JSON say.
"""

from __future__ import annotations

import gzip
import json
import re
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qumran.images import initramfs

CONTROL_PORT = 7000  # busybox nc -ll -e /bin/sh: one shell per connection
IPERF_PORT = 5201  # iperf3's default

# Printed on the serial console by the guest, with its uptime (seconds since its kernel
# started), so the console file says when and the guest says how long after its boot.
LINK = "BENCH-LINK"  # eth0 has carrier (the NIC's link is up)
LEASE = "BENCH-LEASE"  # udhcpc got a lease and the address is configured
UP = "BENCH-UP"  # iperf3 -s and the control port listen

BOOT_SCRIPT = f"""#!/bin/sh
# vs_network's guest: link, lease, servers; each step said on the console.
ip link set lo up
ip link set eth0 up
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ]; do usleep 2000; done
echo "{LINK} $(cut -d' ' -f1 /proc/uptime)" > /dev/console
udhcpc -i eth0 -f -q -n -t 60 -T 1 -s /bench/dhcp.sh > /dev/null 2>&1
iperf3 -s -D > /dev/null 2>&1
nc -ll -p {CONTROL_PORT} -e /bin/sh > /dev/null 2>&1 &
echo "{UP} $(cut -d' ' -f1 /proc/uptime)" > /dev/console
"""
# udhcpc's script: configure the lease (busybox gives the mask in bits) and say so.
DHCP_SCRIPT = f"""#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr flush dev "$interface"
ip addr add "$ip/$mask" dev "$interface"
[ -n "$router" ] && ip route replace default via "${{router%% *}}"
echo "{LEASE} $(cut -d' ' -f1 /proc/uptime) $ip" > /dev/console
exit 0
"""
# The demo's console shell stays; the bench script runs once, beside it.
INITTAB = """ttyS0::respawn:-/bin/sh
::once:/bench/boot.sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
"""
# The demo's profile prints its ready line; the bench's guest says nothing more there.
PROFILE = "export PS1='bench:\\w# '\n"


def shared_libraries(binary: Path) -> list[Path]:
    """The files ``ldd`` says ``binary`` loads (the dynamic loader included)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    return parse_ldd(out)


def parse_ldd(out: str) -> list[Path]:
    found = []
    for line in out.splitlines():
        line = line.strip()
        target = line.split("=>", 1)[1] if "=>" in line else line
        path = target.strip().split(" (", 1)[0].strip()
        if path.startswith("/"):
            found.append(Path(path))
    return found


def extra_archive(iperf3: Path) -> initramfs.Archive:
    """iperf3, its libraries at the paths ldd names (their contents, symlinks resolved),
    the boot and DHCP scripts, and the inittab and profile that run them."""
    archive = initramfs.Archive()
    for path in (iperf3, *shared_libraries(iperf3)):
        archive.add(initramfs.file(str(path), path.resolve().read_bytes(), 0o755))
    archive.add(initramfs.file("bench/boot.sh", BOOT_SCRIPT.encode(), 0o755))
    archive.add(initramfs.file("bench/dhcp.sh", DHCP_SCRIPT.encode(), 0o755))
    archive.add(initramfs.file("etc/inittab", INITTAB.encode()))
    archive.add(initramfs.file("etc/profile", PROFILE.encode()))
    return archive


def build_initrd(demo_initrd: Path, iperf3: Path, target: Path) -> Path:
    """The demo initramfs with :func:`extra_archive` appended, written to ``target``."""
    extra = gzip.compress(extra_archive(iperf3).to_bytes(), compresslevel=6, mtime=0)
    target.write_bytes(demo_initrd.read_bytes() + extra)
    target.chmod(0o644)
    return target


# --- what the guest and the tools print ---------------------------------------------------


@dataclass(frozen=True)
class ConsoleLine:
    what: str  # LINK, LEASE or UP
    uptime: float  # the guest's seconds since boot
    address: str | None = None  # the leased address (LEASE)


_CONSOLE = re.compile(rf"({LINK}|{LEASE}|{UP}) (\d+\.\d+)(?: (\d+\.\d+\.\d+\.\d+))?")


def console_lines(text: str) -> list[ConsoleLine]:
    """Every bench line in console output, in order (other output ignored)."""
    return [ConsoleLine(m.group(1), float(m.group(2)), m.group(3)) for m in _CONSOLE.finditer(text)]


_RTT = re.compile(r"time=(\d+(?:\.\d+)?) ms")


def ping_rtts(out: str) -> list[float]:
    """Round-trip times (seconds) of each reply in ping output (iputils or busybox)."""
    return [float(ms) / 1000 for ms in _RTT.findall(out)]


def iperf_bps(out: str) -> float:
    """Bits per second the receiver counted, from ``iperf3 -J`` output of the client."""
    start = out.find("{")
    if start < 0:
        raise ValueError(f"no JSON in iperf3's output: {out.strip()[-300:]!r}")
    doc = json.loads(out[start : out.rindex("}") + 1])
    if "error" in doc:
        raise ValueError(f"iperf3: {doc['error']}")
    return float(doc["end"]["sum_received"]["bits_per_second"])


def summary(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)
