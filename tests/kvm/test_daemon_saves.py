"""qumran save / restore / managedsave of a native VM: qumran -> qumrand -> qumran-vmm
under a real KVM. The guest counts on its console; after each restore it counts on from
where it was, not from a new boot."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon_kvm import QUMRAN, qumran, qumran_json

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir
from qumran.images.demo import READY_LINE, DemoImage

pytestmark = pytest.mark.kvm


@pytest.fixture
def kvm_daemon() -> Iterator[Daemon]:
    root = short_tmpdir()
    daemon = Daemon(root, driver="real", start_timeout=120)  # see test_daemon_kvm.py
    daemon.start()
    yield daemon
    daemon.cleanup()
    remove_tmpdir(root)


LOOP = "i=0; while true; do i=$((i + 1)); echo count-$i; sleep 0.2; done\n"


def console(daemon: Daemon, name: str, until: str, typed: str = "") -> str:
    proc = subprocess.run(
        [QUMRAN, "console", name, "--until", until, "--timeout", "120"],
        input=typed, capture_output=True, text=True, env=daemon.env, timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:] + logs(daemon, name)
    return proc.stdout


def logs(daemon: Daemon, name: str) -> str:
    """The ends of the VM's console log and qumran-vmm's own log, for a failure message."""
    run = daemon.root / "run" / "vms" / daemon.vm(name)["uuid"][:13]
    ends = []
    for log in ("console.log", "hypervisor.log"):
        try:
            ends.append(f"\n--- {log}:\n" + (run / log).read_text(errors="replace")[-1500:])
        except OSError as exc:
            ends.append(f"\n--- {log}: {exc}")
    return "".join(ends)


def counting_on(daemon: Daemon, name: str) -> int:
    """A count the guest prints now (a whole line: one ending in 0); it must then go on
    counting from there."""
    out = console(daemon, name, "0\r\n")
    counts = re.findall(r"count-(\d+)\r*\n", out)
    assert counts, out[-500:]
    now = int(counts[-1])
    # Far enough ahead that the next `qumran console` (seconds to start under TCG) is
    # connected before the guest gets there.
    console(daemon, name, f"count-{now + 100}\r")
    return now


def _define_and_boot(daemon: Daemon, demo: DemoImage, tmp_path: Path, name: str) -> None:
    """A native VM on the demo guest, defined and started until its shell is ready."""
    doc = {
        "name": name, "memory": "256M", "hypervisor": "native",
        "boot": {"kernel": str(demo.kernel), "initrd": str(demo.initrd), "cmdline": demo.cmdline},
    }  # fmt: skip
    (tmp_path / f"{name}.yaml").write_text(json.dumps(doc))
    qumran_json(daemon, "define", str(tmp_path / f"{name}.yaml"))
    proc = qumran(daemon, "start", name, "--console", "--until", READY_LINE, "--timeout", "150")
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]


def test_save_restore_and_managedsave_continue_the_guest(
    kvm_daemon: Daemon, demo: DemoImage, tmp_path: Path
) -> None:
    _define_and_boot(kvm_daemon, demo, tmp_path, "k-save")
    console(kvm_daemon, "k-save", "count-5\r", LOOP)

    snap = tmp_path / "k-save.snap"
    info = qumran_json(kvm_daemon, "save", "k-save", str(snap))
    assert (info["state"], info["reason"]) == ("shutoff", "saved")
    assert snap.stat().st_size > 0 and not Path(f"{snap}.part").exists()

    info = qumran_json(kvm_daemon, "restore", str(snap))
    assert (info["name"], info["state"], info["reason"]) == ("k-save", "running", "restored")
    first = counting_on(kvm_daemon, "k-save")
    assert first > 5  # counting on, not booted afresh (a new boot prints no count at all)

    # The file of a running VM is refused, in one line.
    proc = qumran(kvm_daemon, "restore", str(snap))
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1, proc.stderr
    assert "running" in proc.stderr and "Traceback" not in proc.stderr

    info = qumran_json(kvm_daemon, "managedsave", "k-save")
    assert (info["state"], info["reason"]) == ("shutoff", "saved")
    info = qumran_json(kvm_daemon, "start", "k-save")
    assert (info["state"], info["reason"]) == ("running", "restored")
    assert counting_on(kvm_daemon, "k-save") > first + 100
    # Resumed once: the managed save is gone, the next start boots afresh.
    proc = qumran(kvm_daemon, "managedsave-remove", "k-save")
    assert proc.returncode != 0 and "no managed save" in proc.stderr, proc.stderr
    qumran_json(kvm_daemon, "destroy", "k-save")

    # A file with one byte of its RAM changed: qumran-vmm refuses it before it runs.
    data = bytearray(snap.read_bytes())
    ram = data.index(b"count-", 2 << 20)  # the guest's console text, in RAM
    data[ram] ^= 1
    bad = tmp_path / "bad.snap"
    bad.write_bytes(bytes(data))
    proc = qumran(kvm_daemon, "restore", str(bad))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "damaged" in proc.stderr, proc.stderr
    assert kvm_daemon.vm("k-save")["state"] == "shutoff"


def test_managedsave_remove_boots_afresh(
    kvm_daemon: Daemon, demo: DemoImage, tmp_path: Path
) -> None:
    _define_and_boot(kvm_daemon, demo, tmp_path, "k-ms")
    qumran_json(kvm_daemon, "managedsave", "k-ms")
    qumran_json(kvm_daemon, "managedsave-remove", "k-ms")
    proc = qumran(kvm_daemon, "start", "k-ms", "--console", "--until", READY_LINE,
                  "--timeout", "150")  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    assert kvm_daemon.vm("k-ms")["reason"] == "booted"
    qumran_json(kvm_daemon, "destroy", "k-ms")
