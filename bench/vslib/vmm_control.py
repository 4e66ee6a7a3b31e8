"""One request to a qumran-vmm control socket (JSON lines, see qumran.vmm.control), for
the benches: blocking, on a connection of its own."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


def ask(control: str | Path, cmd: str, timeout: float = 10.0, /, **args: object) -> dict[str, Any]:
    """The reply to ``{"cmd": cmd, **args}`` on the socket at ``control`` (any argument
    name is free: ``path=`` for ``snapshot``); OSError if the socket cannot be reached or
    does not answer in ``timeout`` seconds, ValueError if the reply is not JSON."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(control))
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
        return reply
