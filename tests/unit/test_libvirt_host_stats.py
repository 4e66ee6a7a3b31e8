"""The host and the domains' statistics through libvirt's clients against a real qumrand:
domain capabilities, the node's counters, GET_ALL_DOMAIN_STATS and the single lookups."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from daemon_harness import Daemon, system_user
from libvirt_clients import XML, define, ok, uri, virsh


def stats_of(text: str) -> dict[str, dict[str, str]]:
    """`virsh domstats` output: {domain: {key: value}}."""
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("Domain: "):
            current = found.setdefault(line.split("'")[1], {})
        elif "=" in line:
            key, _, value = line.strip().partition("=")
            current[key] = value
    return found


def test_domain_capabilities_say_what_qumran_runs(fake_daemon: Daemon) -> None:
    caps = ET.fromstring(ok(fake_daemon, "domcapabilities"))
    assert caps.findtext("arch") == "x86_64" and caps.findtext("machine") == "q35"
    assert caps.findtext("domain") in ("qemu", "kvm")
    assert caps.find("vcpu").get("max") == "64"  # type: ignore[union-attr]
    disk = caps.find("devices/disk")
    assert disk is not None and disk.get("supported") == "yes"
    assert [v.text for v in disk.findall("enum[@name='bus']/value")] == ["virtio"]
    assert [v.text for v in caps.findall("devices/graphics/enum/value")] == ["vnc"]
    assert caps.find("devices/hostdev").get("supported") == "no"  # type: ignore[union-attr]
    # The same document for the machine type Qumran's own domain XML names.
    plain = ok(fake_daemon, "domcapabilities")
    assert ok(fake_daemon, "domcapabilities", "--machine", "pc") == plain
    # What Qumran cannot serve is refused naming it, never answered with a wrong document.
    proc = virsh(fake_daemon, "domcapabilities", "--arch", "aarch64")
    assert proc.returncode == 1
    assert "'aarch64' architecture (Qumran runs x86_64 guests)" in proc.stderr
    proc = virsh(fake_daemon, "domcapabilities", "--emulatorbin", "/usr/bin/qemu-system-arm")
    assert proc.returncode == 1 and "is not Qumran's" in proc.stderr


def test_the_node_counters(fake_daemon: Daemon) -> None:
    mem = ok(fake_daemon, "nodememstats")
    total = int(mem.split("total  :")[1].split()[0])
    with open("/proc/meminfo") as f:
        assert f"{total} kB" in f.readline()  # MemTotal, as the kernel says
    assert "idle:" in ok(fake_daemon, "nodecpustats")
    assert "idle:" in ok(fake_daemon, "nodecpustats", "--cpu", "0")
    proc = virsh(fake_daemon, "nodecpustats", "--cpu", "4096")
    assert proc.returncode == 1 and "no CPU 4096" in proc.stderr
    assert ok(fake_daemon, "maxvcpus").strip() == "64"
    assert "Total:" in ok(fake_daemon, "freecell")
    assert "CPUs online:" in ok(fake_daemon, "nodecpumap")


def test_domstats_for_running_and_stopped_domains(fake_daemon: Daemon, daemon_root: Path) -> None:
    define(fake_daemon, daemon_root)
    define(fake_daemon, daemon_root, "off1")
    ok(fake_daemon, "start", "web1")
    pid = fake_daemon.vm("web1")["pid"]
    found = stats_of(ok(fake_daemon, "domstats"))
    assert sorted(found) == ["off1", "web1"]
    web1, off1 = found["web1"], found["off1"]
    assert (web1["state.state"], web1["state.reason"]) == ("1", "1")  # running, booted
    assert (off1["state.state"], off1["state.reason"]) == ("5", "0")  # shut off
    assert int(web1["cpu.time"]) >= 0 and "cpu.time" not in off1
    assert web1["balloon.maximum"] == "65536" and web1["vcpu.current"] == "2"
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    assert abs(int(web1["balloon.rss"]) - rss) < rss  # the process's own resident memory
    assert web1["net.count"] == "0"  # a user-mode NIC only: no TAP, no counters
    # Filters and groups, as virsh asks them.
    only = stats_of(ok(fake_daemon, "domstats", "--state", "--list-active"))
    assert list(only) == ["web1"] and set(only["web1"]) == {"state.state", "state.reason"}
    assert list(stats_of(ok(fake_daemon, "domstats", "--list-inactive"))) == ["off1"]
    assert list(stats_of(ok(fake_daemon, "domstats", "off1"))) == ["off1"]
    proc = virsh(fake_daemon, "domstats", "nosuch")
    assert proc.returncode == 1 and "failed to get domain 'nosuch'" in proc.stderr


def test_single_counters(fake_daemon: Daemon, daemon_root: Path) -> None:
    define(fake_daemon, daemon_root)
    proc = virsh(fake_daemon, "dommemstat", "web1")
    assert proc.returncode == 1 and "domain is not running" in proc.stderr
    ok(fake_daemon, "start", "web1")
    mem = dict(line.split() for line in ok(fake_daemon, "dommemstat", "web1").splitlines() if line)
    assert mem["actual"] == "65536" and int(mem["rss"]) > 0
    assert ok(fake_daemon, "domblkstat", "web1").split() == ["rd_bytes", "0", "wr_bytes", "0"]
    proc = virsh(fake_daemon, "domblkstat", "web1", "vdz")
    assert proc.returncode == 1 and "vdz is not a disk of web1" in proc.stderr
    proc = virsh(fake_daemon, "domifstat", "web1", "52:54:00:00:00:99")
    assert proc.returncode == 1 and "is not a known interface of web1" in proc.stderr


PYTHON_STATS = """
import libvirt, sys, xml.etree.ElementTree as ET
conn = libvirt.open(sys.argv[1])
caps = ET.fromstring(conn.getDomainCapabilities(None, "x86_64", None, None, 0))
print("caps", caps.findtext("arch"))
for dom, stats in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE
        | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_VCPU
        | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_BLOCK
        | libvirt.VIR_DOMAIN_STATS_INTERFACE, 0):
    print("stats", dom.name(), stats["state.state"], stats["vcpu.current"],
          stats["balloon.current"], "cpu.time" in stats)
dom = conn.lookupByName("web1")
print("memory", sorted(dom.memoryStats()))
print("list", [d.name() for d, _ in conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_STATE)])
"""


def test_python3_libvirt_stats_as_virt_manager_polls_them(
    fake_daemon: Daemon, daemon_root: Path
) -> None:
    define(fake_daemon, daemon_root)
    ok(fake_daemon, "start", "web1")
    proc = subprocess.run(["/usr/bin/python3", "-c", PYTHON_STATS, uri(fake_daemon)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "caps x86_64",
        "stats web1 1 2 65536 True",
        "memory ['actual', 'rss']",
        "list ['web1']",
    ]


def test_stats_are_the_callers_own(fake_daemon: Daemon, daemon_root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creates users; needs root")
    t1 = system_user("qumran-t1")
    define(fake_daemon, daemon_root)  # root's
    path = daemon_root / "t1vm.xml"
    path.write_text(XML.format(name="t1vm"))
    path.chmod(0o644)
    assert virsh(fake_daemon, "define", str(path), user=t1).returncode == 0
    seen = virsh(fake_daemon, "domstats", "--state", user=t1)
    assert seen.returncode == 0 and list(stats_of(seen.stdout)) == ["t1vm"]
    other = virsh(fake_daemon, "domstats", "web1", user=t1)
    assert other.returncode == 1 and "failed to get domain 'web1'" in other.stderr
    assert sorted(stats_of(ok(fake_daemon, "domstats", "--state"))) == ["t1vm", "web1"]
