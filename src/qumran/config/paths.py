"""Where Qumran keeps things, for root (system-wide) and for a normal user.

| what            | root                        | user                                   |
|-----------------|-----------------------------|----------------------------------------|
| API socket      | /run/qumran/qumrand.sock    | $XDG_RUNTIME_DIR/qumran/qumrand.sock   |
| runtime (VMs)   | /run/qumran                 | $XDG_RUNTIME_DIR/qumran                |
| state (SQLite)  | /var/lib/qumran             | $XDG_DATA_HOME/qumran                  |
| guest images    | $XDG_CACHE_HOME/qumran      | $XDG_CACHE_HOME/qumran                 |

``QUMRAN_SOCKET`` overrides the socket for the daemon and its clients alike.
"""

from __future__ import annotations

import os
from pathlib import Path


def runtime_dir(uid: int | None = None) -> Path:
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return Path("/run/qumran")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg if xdg else f"/run/user/{uid}") / "qumran"


def default_socket_path(uid: int | None = None) -> str:
    override = os.environ.get("QUMRAN_SOCKET")
    if override:
        return override
    return str(runtime_dir(uid) / "qumrand.sock")


def state_dir(uid: int | None = None) -> Path:
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return Path("/var/lib/qumran")
    xdg = os.environ.get("XDG_DATA_HOME")
    return Path(xdg if xdg else Path.home() / ".local" / "share") / "qumran"


def cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg if xdg else Path.home() / ".cache") / "qumran"
