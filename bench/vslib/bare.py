"""Bare QEMU: the exact argv Qumran's QEMU driver would run, started by hand.

The argv comes from ``qumran.drivers.qemu.cmdline.build_argv`` with the accelerator the
driver would choose on this host, so the only difference from ``qumran start`` is the
daemon and the CLI around it. The sockets and the console log are handed to QEMU as open
fds, as the driver does. Ready is seen in the console log file QEMU writes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from vslib.measure import POLL, BenchError, now, wait_for_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qumran.drivers.base import HandoffFds


def bare_argv(definition: dict[str, object], fds: HandoffFds) -> list[str]:
    from qumran.config.validate import validate_spec
    from qumran.drivers.qemu.accel import choose_accel
    from qumran.drivers.qemu.cmdline import build_argv

    spec = validate_spec(definition)
    return build_argv(spec, fds, choose_accel().accel)


def _listening(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen(1)
    return sock


def handoff(run_dir: Path, stack: contextlib.ExitStack) -> HandoffFds:
    """What the QEMU driver hands QEMU: listening monitor and console sockets and the
    console log open for appending (their paths in ``run_dir``), as inherited fds."""
    from qumran.drivers.base import HandoffFds

    monitor = stack.enter_context(_listening(run_dir / "monitor.sock"))
    console = stack.enter_context(_listening(run_dir / "console.sock"))
    log = os.open(run_dir / "console.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    stack.callback(os.close, log)
    return HandoffFds(monitor=monitor.fileno(), console=console.fileno(), console_log=log)


def accelerator() -> str:
    from qumran.drivers.qemu.accel import choose_accel

    return choose_accel().accel


def start_to_ready(
    definition: dict[str, object], run_dir: Path, ready: bytes, timeout: float = 120
) -> dict[str, float]:
    """Seconds from exec of QEMU until ``ready`` is in its console log; QEMU is killed after."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with contextlib.ExitStack() as ours, open(run_dir / "hypervisor.log", "wb") as log:
        fds = handoff(run_dir, ours)
        argv = bare_argv(definition, fds)
        t0 = now()
        # Its own session, as the driver and libvirt give QEMU: with the scheduler's
        # autogroups a session shares the CPU as one, and this benchmark's session may hold
        # other busy processes.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            pass_fds=(fds.monitor, fds.console or fds.monitor, fds.console_log),
        )  # fmt: skip
    try:
        running = _main_loop_running(run_dir / "monitor.sock", t0 + timeout) - t0
        return {"ready": wait_for_text(run_dir / "console.log", ready, t0 + timeout) - t0,
                "running": running}  # fmt: skip
    finally:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)


def _main_loop_running(path: Path, deadline: float) -> float:
    """When QEMU first answered a QMP command (:func:`now`).

    The greeting comes from the monitor's own I/O thread, possibly before the machine is
    built; commands run in the main loop, which starts with the vCPUs (no ``-S``). So the
    reply to ``qmp_capabilities`` marks the end of QEMU's own start: the guest runs.
    """
    while now() < deadline:
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(POLL)
                continue
            sock.settimeout(max(0.1, deadline - now()))
            with sock.makefile("rwb") as qmp:
                qmp.readline()  # the greeting
                qmp.write(b'{"execute": "qmp_capabilities"}\n')
                qmp.flush()
                if qmp.readline():
                    return now()
    raise BenchError(f"no QMP answer on {path}")
