"""Attack 1 of issue 10: the web manager's VNC relay turned into a root API client.

A owns a VM, replaces ``vnc.sock`` in its run directory with a symlink to qumrand's own
API socket, and opens the VNC WebSocket of that VM in the web manager. If root qumrand
follows the path, A talks to the API as uid 0: sees every user's VMs, and could define a
VM that runs as root. Outcome checked: no API answer comes back through the relay.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from attacker import as_user, http_request, plant_symlink
from security_tier import Users, WebSession, define_as, run_dir, start_as
from websockets.exceptions import ConnectionClosed, InvalidStatus

from daemon_harness import Daemon

pytestmark = pytest.mark.security

PEEK = http_request("GET", "/v1/vms?all=true")


def relay(session: WebSession, path: str, data: bytes) -> bytes | None:
    """Send ``data`` through the WebSocket at ``path``; what came back (None: refused)."""
    try:
        ws = session.ws(path)
    except InvalidStatus as refused:
        assert refused.response.status_code < 500, refused.response.body
        return None
    answer = b""
    with ws:
        try:
            ws.send(data)
            while True:
                frame = ws.recv(timeout=5)
                answer += frame if isinstance(frame, bytes) else frame.encode()
        except (ConnectionClosed, TimeoutError):
            pass
    return answer


def test_the_vnc_route_relays_nothing_for_a_vm_without_graphics(
    web_daemon: Daemon, users: Users, daemon_root: Path
) -> None:
    define_as(web_daemon, None, "rootvm", daemon_root)
    define_as(web_daemon, users.b, "bvm", daemon_root)
    define_as(web_daemon, users.a, "avm", daemon_root)  # serial console, no graphics
    start_as(web_daemon, users.a, "avm")
    vnc = str(run_dir(web_daemon, "avm") / "vnc.sock")
    planted = as_user(users.a, plant_symlink, vnc, web_daemon.socket)

    answer = relay(WebSession(web_daemon, users.a), "/ws/vms/avm/vnc", PEEK)

    context = f"planting vnc.sock: {planted}; relayed back: {answer!r:.400}"
    assert answer is None or (b"rootvm" not in answer and b"bvm" not in answer), context
    assert answer is None or b"HTTP/1." not in answer, context  # no API answer at all
    # A VM without graphics has no display: the route refuses it, or relays nothing.
    assert not answer, context


def test_the_vnc_route_of_a_vm_with_graphics_reaches_only_its_display(
    qemu_daemon: Daemon, users: Users, daemon_root: Path, scratch: Path
) -> None:
    """The same, with a real QEMU display (firmware boot from an empty disk: it runs, and
    waits, as long as we like)."""
    disk = scratch / "empty.raw"
    disk.write_bytes(bytes(1 << 20))
    disk.chmod(0o600)
    os.chown(disk, users.a.pw_uid, users.a.pw_gid)
    define_as(qemu_daemon, None, "rootvm", daemon_root)
    define_as(qemu_daemon, users.b, "bvm", daemon_root)
    define_as(
        qemu_daemon, users.a, "agfx", daemon_root,
        boot={"disk": 0}, disks=[{"path": str(disk)}], graphics=True, serial=False,
    )  # fmt: skip
    start_as(qemu_daemon, users.a, "agfx")
    vnc = str(run_dir(qemu_daemon, "agfx") / "vnc.sock")
    planted = as_user(users.a, plant_symlink, vnc, qemu_daemon.socket)

    answer = relay(WebSession(qemu_daemon, users.a), "/ws/vms/agfx/vnc", PEEK)

    context = f"planting vnc.sock: {planted}; relayed back: {answer!r:.400}"
    assert answer is None or (b"rootvm" not in answer and b"bvm" not in answer), context
    assert answer is None or b"HTTP/1." not in answer, context
    assert answer is None or answer.startswith(b"RFB "), context  # the display's greeting
