"""Snapshot and restore: qumran-vmm (control ``snapshot``, ``--restore``) against QEMU q35
(``migrate`` to a file, then ``-incoming``), the demo guest with 512 MiB, in the KVM test
host:

    python -m tests.kvmhost run --timeout 1500 --cwd "$PWD" -- \\
        "$PWD/.venv/bin/python" bench/vmm_snapshot.py [--runs 3] [--fill 64]

The guest first fills ``--fill`` MiB of its tmpfs with random bytes, so the file holds
more than a freshly booted kernel. Snapshot: from the request to the file being complete
(qumran-vmm: the control reply, after fsync and rename; QEMU: ``query-migrate`` says
completed). Restore: from exec to the guest echoing a line typed on its console.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from vmm_boot import QUMRAN_VMM, contenders, find_demo, read_until
from vslib.vmm_control import ask


class Qmp:
    def __init__(self, path: Path) -> None:
        while not path.exists():
            time.sleep(0.01)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rw")
        self.file.readline()
        self.call("qmp_capabilities")

    def call(self, cmd: str, **args: object) -> object:
        self.file.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply or "error" in reply:
                return reply

    def close(self) -> None:
        self.sock.close()


def _boot(argv: list[str], ready: str, fill: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    read_until(proc, ready.encode(), "READY")
    assert proc.stdin is not None
    proc.stdin.write(f"head -c {fill}M /dev/urandom > /tmp/fill; echo FILLED''-OK\n".encode())
    proc.stdin.flush()
    read_until(proc, b"FILLED-OK", "the fill")
    return proc


def _echo_after_restore(proc: subprocess.Popen[bytes]) -> None:
    """A line typed on the restored guest's console comes back: it runs again."""
    assert proc.stdin is not None
    proc.stdin.write(b"echo RESUMED''-OK\n")
    proc.stdin.flush()
    read_until(proc, b"RESUMED-OK", "the echo after restore")


def _resumed(argv: list[str]) -> float:
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    _echo_after_restore(proc)
    took = time.monotonic() - start
    proc.kill()
    proc.wait()
    return took


def run_ours(argv: list[str], ready: str, fill: int, tmp: Path) -> tuple[float, float, int]:
    ctl, snap = tmp / "ctl.sock", tmp / "vm.snap"
    proc = _boot(argv, ready, fill)
    start = time.monotonic()
    reply = ask(ctl, "snapshot", path=str(snap))
    saved = time.monotonic() - start
    assert reply["ok"], reply
    ask(ctl, "quit")
    proc.wait()
    size = snap.stat().st_blocks * 512
    restored = _resumed([QUMRAN_VMM, "--restore", str(snap), "--control", str(ctl)])
    snap.unlink()
    return saved, restored, size


def _step(what: str) -> None:
    print(f"  {time.monotonic():.3f} {what}", file=sys.stderr, flush=True)


def _until_status(qmp: Qmp, query: str, done: tuple[str, ...]) -> str:
    """Poll ``query-migrate`` or ``query-status`` until its status is one of ``done``."""
    while True:
        reply = qmp.call(query)
        status = str(reply["return"].get("status"))  # type: ignore[index]
        if status in done:
            return status
        time.sleep(0.005)


def run_qemu(argv: list[str], ready: str, fill: int, tmp: Path) -> tuple[float, float, int]:
    """QEMU 7.2 has no ``file:`` migration URI: ``exec:cat``. The guest is stopped first,
    as qumran-vmm pauses it, so both write one still image. On restore, QEMU waits with
    ``-incoming defer`` until QMP's ``migrate-incoming`` (typed console input before the
    state is loaded would be lost: that hung the first version of this bench), and the
    echo is typed once ``query-status`` says running (after a ``cont``: the stream carries
    the source's stopped state)."""
    qmp_path, snap = tmp / "qmp.sock", tmp / "qemu.mig"
    qmp_arg = ["-qmp", f"unix:{qmp_path},server=on,wait=off"]
    proc = _boot([*argv, *qmp_arg], ready, fill)
    qmp = Qmp(qmp_path)
    start = time.monotonic()
    _step("QEMU: stop and migrate")
    qmp.call("stop")
    _step(f"QEMU: migrate {qmp.call('migrate', uri=f'exec:cat > {snap}')}")
    status = _until_status(qmp, "query-migrate", ("completed", "failed"))
    saved = time.monotonic() - start
    assert status == "completed", status
    qmp.close()
    proc.kill()
    proc.wait()
    qmp_path.unlink(missing_ok=True)
    size = snap.stat().st_blocks * 512

    start = time.monotonic()
    proc = subprocess.Popen([*argv, *qmp_arg, "-incoming", "defer"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)  # fmt: skip
    qmp = Qmp(qmp_path)
    _step(f"QEMU: migrate-incoming {qmp.call('migrate-incoming', uri=f'exec:cat {snap}')}")
    status = _until_status(qmp, "query-migrate", ("completed", "failed"))
    assert status == "completed", status
    _step("QEMU: incoming completed")
    # The stream carries the source's run state (stopped): the guest waits for `cont`.
    if _until_status(qmp, "query-status", ("running", "paused", "postmigrate")) != "running":
        qmp.call("cont")
        _until_status(qmp, "query-status", ("running",))
    _step("QEMU: running")
    _echo_after_restore(proc)
    restored = time.monotonic() - start
    qmp.close()
    proc.kill()
    proc.wait()
    qmp_path.unlink(missing_ok=True)
    snap.unlink()
    return saved, restored, size


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fill", type=int, default=64)
    parser.add_argument("--only", choices=("qumran-vmm", "qemu"), help="measure one side")
    args = parser.parse_args()
    demo = find_demo()
    results: dict[str, list[tuple[float, float, int]]] = {"qumran-vmm": [], "QEMU q35": []}
    with tempfile.TemporaryDirectory(prefix="qsnap-") as d:
        tmp = Path(d)
        argvs = contenders(demo, 512, 1, tmp / "ctl.sock")
        for _ in range(args.runs):
            if args.only != "qemu":
                results["qumran-vmm"].append(run_ours(argvs["qumran-vmm"], demo.ready_line,
                                                      args.fill, tmp))  # fmt: skip
                print("qumran-vmm", results["qumran-vmm"][-1], flush=True)
            if args.only != "qumran-vmm":
                results["QEMU q35"].append(run_qemu(argvs["QEMU `-M q35`"], demo.ready_line,
                                                    args.fill, tmp))  # fmt: skip
                print("QEMU", results["QEMU q35"][-1], flush=True)
    print(f"| 512 MiB guest, {args.fill} MiB filled | snapshot s | restore to running s "
          "| file on disk MiB |\n| --- | --- | --- | --- |")  # fmt: skip
    for name, rows in results.items():
        if not rows:
            continue
        saved = statistics.median(r[0] for r in rows)
        restored = statistics.median(r[1] for r in rows)
        size = statistics.median(r[2] for r in rows) / (1 << 20)
        print(f"| {name} | {saved:.3f} | {restored:.3f} | {size:.0f} |")
    print("\nruns:", json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
