"""The benchmark's own machinery: report markers, verdicts, ready detection, definitions.

Run: .venv/bin/pytest bench/vslib  (no libvirt, QEMU or daemon needed)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from vslib import vmm_control
from vslib.libvirt_stack import LibvirtStack
from vslib.measure import (
    BenchError,
    Timing,
    cpu_seconds,
    now,
    pids_by_comm,
    process_started,
    thread_cpu_seconds,
    wait_for_text,
)
from vslib.qumran_stack import QumranStack
from vslib.report import BEGIN, END, Results, render, write_section

ODD = Path("/tmp/o'dd & <dir>")


def timing(ms: float) -> Timing:
    s = ms / 1000
    return Timing(mean=s, stddev=0.001, median=s, minimum=s, maximum=s, runs=20)


def boots(ready: float, **parts: float) -> list[dict[str, float]]:
    return [{"ready": ready, **parts}] * 3


def sample() -> Results:
    res = Results(meta={"vms": "100"})
    res.cli = {"list": {"qumran": timing(25), "libvirt": timing(30)}}
    res.start = {
        "bare": boots(2.0, running=0.05),
        "qumran": boots(2.1, forked=0.03, returned=0.1, delivery=0.002),
        "libvirt": boots(2.4, forked=0.02, returned=0.3),
    }
    res.rss = {"qumran": {"qumrand": 25 * 1024}, "libvirt": {"libvirtd": 30 * 1024}}
    return res


def row(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {start}"))


def test_write_section_replaces_only_between_markers(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# B\n\nintro\n\n{BEGIN}\nold\n{END}\n\n## other\nkept\n")
    write_section(path, "new\n")
    write_section(path, "newer\n")
    assert path.read_text() == f"# B\n\nintro\n\n{BEGIN}\nnewer\n{END}\n\n## other\nkept\n"


def test_write_section_appends_markers_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# B\n")
    write_section(path, "table\n")
    assert path.read_text() == f"# B\n\n{BEGIN}\ntable\n{END}\n"


def test_verdicts_follow_the_targets() -> None:
    text = render(sample())
    assert row(text, "`list --all`").endswith("| 0.83 | qumran ≤ virsh | ✓ |")
    # 100 ms added against 400 ms: a quarter, within half.
    assert "| +100 ms | +400 ms | 0.25 | qumran ≤ ½ libvirt | ✓ |" in text
    # From the parts: 30 + 2 ms against 300 - 50 ms.
    assert "| +32 ms | +250 ms | 0.13 | qumran ≤ ½ libvirt | ✓ |" in text
    assert row(text, "daemon RSS").endswith("| 0.83 | qumran ≤ libvirt | ✓ |")


def test_every_cli_row_has_its_range_runs_and_verdict() -> None:
    res = sample()
    res.meta["vms"] = "100"
    res.cli["list@10"] = {"qumran": timing(12), "libvirt": timing(13)}
    res.cli["define"] = {"qumran": timing(20), "libvirt": timing(15)}
    text = render(res)
    lines = [line for line in text.splitlines() if line.startswith("| `")]
    assert [line.split(":")[0] for line in lines] == [
        "| `list --all`, 10 defined",
        "| `list --all`, 100 defined",
        "| `define FILE`",
    ]
    assert row(text, "`list --all`, 10").startswith(
        "| `list --all`, 10 defined: median (range), n=20 | 12.0 ms (12.0\u201312.0) |"
    )
    assert row(text, "`define FILE`").endswith("| 1.33 | qumran ≤ virsh | ✗ |")


def test_idle_cpu_is_judged_per_running_vm_and_restart_against_150_ms() -> None:
    res = sample()
    res.idle = {
        "qumran": {"vms": 10, "seconds": 30, "cpu": 0.02, "rss": 40 * 1024},
        "libvirt": {"vms": 10, "seconds": 30, "cpu": 0.0, "rss": 30 * 1024},
        "fake": {"vms": 100, "seconds": 30, "cpu": 0.5, "rss": 50 * 1024},
    }
    res.restart = {"qumran": [0.2, 0.3, 0.25], "libvirt": [0.9, 1.0, 1.1]}
    text = render(res)
    # 0.02 s in 30 s: 0.067 %, within 10 x 0.01 %; libvirt used nothing: no ratio.
    assert row(text, "daemon CPU, idle").endswith("| - | qumran ≤ 0.01 % per VM | ✓ |")
    assert "0.067 % (2 ticks in 30 s, 10 VMs)" in row(text, "daemon CPU, idle")
    assert row(text, "qumrand CPU, idle, fake").endswith("| qumran ≤ 0.01 % per VM | ✗ |")
    assert row(text, "daemon RSS then").endswith("| 1.33 | qumran ≤ libvirt | ✗ |")
    restart = row(text, "daemon restarted")
    assert "| 250 ms (200\u2013300), n=3 | 1000 ms (900\u20131100), n=3 | 0.25 |" in restart
    assert restart.endswith("| qumran ≤ 150 ms | ✗ |")


def test_a_slower_qumran_fails_its_targets() -> None:
    res = sample()
    res.cli["list"]["qumran"] = timing(45)
    res.rss["qumran"]["qumrand"] = 70 * 1024
    text = render(res)
    assert row(text, "`list --all`").endswith("| ✗ |")
    assert row(text, "daemon RSS").endswith("| ✗ |")


def test_boot_noise_gives_no_verdict() -> None:
    res = sample()
    res.start["libvirt"] = boots(1.9, forked=0.02, returned=0.3)  # faster than bare: noise
    assert row(render(res), "added on top").endswith("| - | qumran ≤ ½ libvirt | - |")


def test_a_failed_stack_is_reported_not_raised() -> None:
    res = sample()
    del res.start["qumran"]
    res.start_errors["qumran"] = "BenchError: qumrand exited"
    res.cli["dominfo"] = {"qumran": "hyperfine failed", "libvirt": "hyperfine failed"}
    text = render(res)
    assert "n/a (BenchError: qumrand exited)" in text
    assert "n/a (hyperfine failed)" in row(text, "`dominfo")


def test_wait_for_text_finds_a_line_split_across_writes(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"

    def write() -> None:
        time.sleep(0.05)
        with open(path, "ab") as f:
            f.write(b"boot...\nQUMRAN-DE")
            f.flush()
            time.sleep(0.05)
            f.write(b"MO READY\n")

    writer = threading.Thread(target=write)
    t0 = now()
    writer.start()
    seen = wait_for_text(path, b"QUMRAN-DEMO READY", t0 + 5)
    writer.join()
    assert 0.09 < seen - t0 < 1


def test_wait_for_text_gives_up_at_the_deadline(tmp_path: Path) -> None:
    (tmp_path / "serial.log").write_bytes(b"QUMRAN-DEMO\n")
    with pytest.raises(BenchError):
        wait_for_text(tmp_path / "serial.log", b"QUMRAN-DEMO READY", now() + 0.1)


def test_zombies_are_not_running_daemons() -> None:
    zombie = subprocess.Popen(["sleep", "0"])
    live = subprocess.Popen(["sleep", "5"])
    try:
        time.sleep(0.3)  # the first has exited and is not reaped: a zombie
        pids = pids_by_comm("sleep")
        assert live.pid in pids
        assert zombie.pid not in pids
        assert abs(process_started(live.pid) - now()) < 1.5
    finally:
        live.kill()
        live.wait()
        zombie.wait()


def test_domain_xml_is_the_qumran_machine_with_paths_escaped() -> None:
    lv = LibvirtStack(ODD, ODD / "vmlinuz", ODD / "initrd.img", "console=ttyS0 quiet")
    dom = ET.fromstring(lv.domain_xml("qbench-000"))
    assert dom.get("type") == "qemu"
    assert dom.findtext("os/kernel") == str(ODD / "vmlinuz")
    assert dom.findtext("os/cmdline") == "console=ttyS0 quiet"
    assert dom.find("os/type").get("machine") == "q35"  # type: ignore[union-attr]
    assert dom.find("cpu").get("mode") == "maximum"  # type: ignore[union-attr]
    assert dom.find("features/acpi") is not None
    serial = dom.find("devices/serial/source")
    assert serial is not None and serial.get("path") == str(ODD / "qbench-000.serial")


def test_qumran_definition_is_valid_and_the_same_vm() -> None:
    from qumran.config.validate import validate_spec

    q = QumranStack(ODD, ODD, ODD / "vmlinuz", ODD / "initrd.img", "console=ttyS0 quiet")
    spec = validate_spec(yaml.safe_load(q.definition("qbench-000")))
    assert (spec.name, spec.memory, spec.vcpus) == ("qbench-000", 256, 1)
    assert str(spec.boot.kernel) == str(ODD / "vmlinuz")  # type: ignore[union-attr]


def test_a_vms_helpers_are_its_children_and_what_names_it() -> None:
    """helpers_of finds the VMM's child and a process naming the VM's folder or forward
    (whoever its parent), and leaves other processes alone."""
    import sys

    from vslib.procs import helpers_of

    py, nap = sys.executable, "import time; time.sleep(60)"
    vmm = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])  # "the VMM", with a child
    named = subprocess.Popen([py, "-c", nap, "--sock=/run/abc-123/disk0.sock"])
    forward = subprocess.Popen([py, "-c", nap, "-t", "127.0.0.1/4242:22"])
    other = subprocess.Popen([py, "-c", nap, "/run/abc-124/", "127.0.0.1/4243:22"])
    try:
        deadline = time.monotonic() + 10
        while True:  # until each has exec'd (a fork not yet exec'd shows its parent's argv)
            found = helpers_of(vmm.pid, [b"/abc-123/", b"/4242:"])
            if len(found) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        child = [pid for pid, name in found.items() if name == "sleep"]
        assert len(child) == 1 and child[0] != vmm.pid, found
        assert sorted(found) == sorted([child[0], named.pid, forward.pid]), found
        assert found[named.pid] == found[forward.pid] == Path(py).name, found
    finally:
        for p in (vmm, named, forward, other):
            p.kill()
            p.wait()


def test_thread_cpu_is_each_threads_own_and_process_cpu_all_of_them() -> None:
    spin_tid: list[int] = []
    stop = threading.Event()

    def spin() -> None:
        spin_tid.append(threading.get_native_id())
        while not stop.is_set():
            pass

    pid = os.getpid()
    me = threading.get_native_id()
    idle_before = thread_cpu_seconds(pid, [me])
    worker = threading.Thread(target=spin)
    worker.start()
    try:
        time.sleep(0.8)  # this thread idles while the other spins
        spun = thread_cpu_seconds(pid, spin_tid)
        idle = thread_cpu_seconds(pid, [me]) - idle_before
        whole = cpu_seconds([pid])
        by_tid = cpu_seconds(spin_tid)
    finally:
        stop.set()
        worker.join()
    assert spun >= 0.2  # (it had a CPU part of that time at least)
    assert idle < 0.2
    assert whole >= spun + thread_cpu_seconds(pid, [me]) - 0.05  # every thread's
    assert by_tid >= whole - 0.05  # /proc/TID/stat counts the process, not the thread


def test_vmm_control_asks_one_json_line_and_reads_the_reply(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(10)
    got: list[bytes] = []

    def answer() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as f:
            got.append(f.readline())
            f.write(b'{"ok": true, "devices": []}\n')

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    assert vmm_control.ask(path, "snapshot", path="/x") == {"ok": True, "devices": []}
    thread.join(5)
    server.close()
    assert json.loads(got[0]) == {"cmd": "snapshot", "path": "/x"}
