"""`qumran daemon status|stop|restart`: qumrand's own life, for machines without systemd.

status asks qumrand about itself (``GET /v1/daemon``). stop and restart are signals to
the pid it gives -- SIGTERM, SIGHUP -- sent through a pidfd taken first (the pid cannot
be reused under us), so the kernel decides who may: root, and the daemon's own user.
A restart keeps the listening socket open (qumrand re-executes itself holding it), so
clients meanwhile wait in its backlog rather than being refused; VMs keep running.
Under systemd, stop is systemctl's job (the socket unit would start qumrand again).

Exit status: 0; 1 with one ``error:`` line; ``status`` gives 3 when qumrand is not
running (as ``systemctl status`` and LSB init scripts do).
"""

from __future__ import annotations

import os
import sys
import time

from qumran.cli import output
from qumran.client import Client
from qumran.client.errors import DaemonNotRunning
from qumran.errors import InvalidState, PermissionDenied, QumranError, Timeout

TYPE_CHECKING = False  # typing and argparse stay out of the CLI's fast path (cli/quick.py)
if TYPE_CHECKING:
    import argparse

    from qumran.client.schema import DaemonInfo

NOT_RUNNING = 3
POLL = 0.02  # between asking a restarting qumrand whether it is the new one yet


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("status", "stop", "restart"), help="what to do")
    p.add_argument(
        "--timeout", type=float, default=60.0, metavar="S",
        help="how long stop and restart wait for qumrand (default: 60)",
    )  # fmt: skip


def handler(args: argparse.Namespace) -> int:
    client = Client(args.socket)
    if args.action == "status":
        return _status(args, client)
    info = client.daemon()
    if args.action == "stop":
        return _stop(info, args.timeout)
    return _restart(client, info, args.timeout)


def _status(args: argparse.Namespace, client: Client) -> int:
    try:
        info = client.daemon()
    except DaemonNotRunning:
        print(f"qumrand is not running: nothing listens on {client.socket_path}")
        return NOT_RUNNING
    if args.json:
        output.print_json(info)
        return 0
    up = max(0.0, time.time() - info["started_at"])
    web = info["web"] or "off (turn it on in the settings file: [web] enabled = true)"
    if info["web"]:
        web += " (log in with `qumran web`)"
    pairs = [
        ("qumrand", f"running, pid {info['pid']}, up {_duration(up)}, version {info['version']}"),
        ("User", output.user_label(info["uid"])),
        ("Socket", info["socket"] + ("  (from systemd)" if info["socket_source"] == "systemd"
                                     else "")),
        ("Settings", info["config_file"] or "built-in defaults (no settings file)"),
        ("Run dir", info["run_dir"]),
        ("State dir", info["state_dir"]),
        ("Log level", info["log_level"]),
        ("Web manager", web),
    ]  # fmt: skip
    if info["systemd_unit"]:
        pairs.append(("systemd unit", info["systemd_unit"]))
    sys.stdout.write(output.key_values(pairs))
    return 0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _signal(info: DaemonInfo, sig: int, verb: str) -> int:
    """Send ``sig`` to qumrand through a pidfd; return the pidfd (to wait on)."""
    import signal

    pid = info["pid"]
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise InvalidState(
            f"qumrand says it is pid {pid}, which this process cannot see (another PID "
            f"namespace?): {verb} it where it runs"
        ) from None
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except PermissionError:
        os.close(pidfd)
        who = "root" if info["uid"] == 0 else f"root and {output.user_label(info['uid'])}"
        raise PermissionDenied(
            f"only {who} may {verb} this qumrand (pid {pid})"
            + (": try `sudo qumran daemon " + verb + "`" if info["uid"] == 0 else "")
        ) from None
    return pidfd


def _stop(info: DaemonInfo, timeout: float) -> int:
    import select
    import signal

    unit = info["systemd_unit"]
    if unit is not None:
        systemctl = "systemctl" if info["uid"] == 0 else "systemctl --user"
        units = f"qumrand.socket {unit}" if info["socket_source"] == "systemd" else unit
        raise InvalidState(
            f"qumrand runs as the systemd unit {unit}: stop it with `{systemctl} stop {units}`"
        )
    pidfd = _signal(info, signal.SIGTERM, "stop")
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)  # readable once it has exited
    finally:
        os.close(pidfd)
    if not ready:
        raise Timeout(f"qumrand (pid {info['pid']}) has not stopped after {timeout:g} s")
    print(f"qumrand (pid {info['pid']}) stopped; running VMs keep running")
    return 0


def _restart(client: Client, info: DaemonInfo, timeout: float) -> int:
    import select
    import signal

    pidfd = _signal(info, signal.SIGHUP, "restart")
    deadline = time.monotonic() + timeout
    try:
        while True:
            # Answered by the old qumrand until it stops accepting; then this waits in
            # the socket's backlog until the new one takes it.
            now = client.daemon()
            if now["started_at"] != info["started_at"] or now["pid"] != info["pid"]:
                break
            if select.select([pidfd], [], [], POLL)[0]:
                raise QumranError(
                    f"qumrand (pid {info['pid']}) exited instead of restarting: see its log"
                )
            if time.monotonic() > deadline:
                raise Timeout(f"qumrand has not restarted after {timeout:g} s")
    finally:
        os.close(pidfd)
    print(
        f"qumrand restarted (pid {now['pid']}); its socket stayed open and running VMs kept running"
    )
    return 0


# The command's (arguments, handler): qumran.cli.commands imports this module only for it.
FUNCTIONS = {"daemon": (arguments, handler)}
