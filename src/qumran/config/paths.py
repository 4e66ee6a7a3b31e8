"""Where Qumran keeps things, for root (system-wide) and for a normal user.

| what            | root                        | user                                   |
|-----------------|-----------------------------|----------------------------------------|
| API socket      | /run/qumran/qumrand.sock    | RUNTIME/qumrand.sock                   |
| runtime (VMs)   | /run/qumran                 | RUNTIME                                |
| state (SQLite)  | /var/lib/qumran             | $XDG_DATA_HOME/qumran                  |
| config file     | /etc/qumran/qumrand.toml    | $XDG_CONFIG_HOME/qumran/qumrand.toml   |
| guest images    | $XDG_CACHE_HOME/qumran      | $XDG_CACHE_HOME/qumran                 |

A user's RUNTIME is ``$XDG_RUNTIME_DIR/qumran`` (XDG Base Directory spec), else
``/run/user/UID/qumran`` where systemd-logind made that folder, else -- ``su -``,
containers, ssh without a systemd login -- ``/tmp/qumran-UID``, a folder private to the
user (0700, the user's own, not a symlink: qumrand checks it before use, as tmux does for
``/tmp/tmux-UID``). A runtime folder that is set but is not the user's own (``su``
without ``-`` keeps the caller's ``XDG_RUNTIME_DIR``) is passed over the same way.

``QUMRAN_SOCKET`` overrides the socket for the daemon and its clients alike.
``qumran.client.paths`` answers the same with ``os`` alone; a unit test holds the two together.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

SYSTEM_RUN_DIR = Path("/run/qumran")
SYSTEM_CONFIG = Path("/etc/qumran/qumrand.toml")
# systemd-logind's per-user runtime folders; a module variable so tests can move it.
USER_RUNTIME_BASE = "/run/user"
FALLBACK_BASE = "/tmp"


def _owned_dir(path: str, uid: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid == uid and stat.S_ISDIR(st.st_mode)


def user_runtime_base(uid: int) -> str | None:
    """The user's own runtime folder ($XDG_RUNTIME_DIR, else logind's), or None."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and _owned_dir(xdg, uid):
        return xdg
    logind = f"{USER_RUNTIME_BASE}/{uid}"
    return logind if _owned_dir(logind, uid) else None


def fallback_runtime_dir(uid: int) -> Path:
    return Path(FALLBACK_BASE) / f"qumran-{uid}"


def runtime_dir(uid: int | None = None) -> Path:
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return SYSTEM_RUN_DIR
    base = user_runtime_base(uid)
    return Path(base) / "qumran" if base is not None else fallback_runtime_dir(uid)


def is_fallback(run: Path, uid: int | None = None) -> bool:
    """Whether ``run`` is the private /tmp folder of a user without a runtime folder."""
    uid = os.geteuid() if uid is None else uid
    return uid != 0 and run == fallback_runtime_dir(uid)


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


def config_file(uid: int | None = None) -> Path:
    """qumrand's settings file: /etc for root's daemon, the XDG config folder for a user's."""
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return SYSTEM_CONFIG
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return Path(xdg if xdg else Path.home() / ".config") / "qumran" / "qumrand.toml"


def cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg if xdg else Path.home() / ".cache") / "qumran"
