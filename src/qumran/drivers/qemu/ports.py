"""Host ports a user-mode NIC forwards: refused at define when QEMU could not bind them.

QEMU runs as the VM's owner, and binds each ``hostfwd`` port itself when it starts. A
port below the host's first unprivileged port (``net.ipv4.ip_unprivileged_port_start``,
1024 unless changed) needs root, so for any other owner QEMU would fail at every start;
the definition is refused at once instead, naming the field. A port that is merely in
use is a matter of the moment, and QEMU's own error at start says so.
"""

from __future__ import annotations

from pathlib import Path

from qumran.config.spec import VmSpec
from qumran.drivers.asuser import effective_uid
from qumran.drivers.base import Owner
from qumran.errors import InvalidArgument

UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
DEFAULT_PORT_START = 1024


def first_unprivileged_port(source: Path = UNPRIVILEGED_PORT_START) -> int:
    try:
        return int(source.read_text().strip())
    except (OSError, ValueError):
        return DEFAULT_PORT_START


def check_ports(spec: VmSpec, owner: Owner, source: Path = UNPRIVILEGED_PORT_START) -> None:
    """Raise InvalidArgument if a forwarded host port needs rights QEMU will not have."""
    uid = effective_uid(owner.uid)
    if uid == 0:
        return
    start: int | None = None
    for index, nic in enumerate(spec.nics):
        for rule, forward in zip(nic.forward, nic.forwards, strict=True):
            if start is None:
                start = first_unprivileged_port(source)
            if forward.host_port < start:
                raise InvalidArgument(
                    f"nics[{index}].forward: {rule!r} forwards host port {forward.host_port}, "
                    f"but QEMU runs as uid {uid} and only root may bind ports below {start} "
                    f"(net.ipv4.ip_unprivileged_port_start); use a port from {start} up"
                )
