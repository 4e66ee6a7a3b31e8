"""Where the qumrand socket lives: the same answer as ``qumran.config.paths`` gives.

``QUMRAN_SOCKET`` overrides; root's daemon is the system instance under ``/run``; a
user's daemon lives in the user's runtime folder (``$XDG_RUNTIME_DIR``, XDG Base
Directory spec), falling back to ``/run/user/UID`` where systemd-logind puts it.
Written with ``os`` alone because every CLI run resolves it (``pathlib`` costs start-up
time); a unit test holds it to ``qumran.config.paths.default_socket_path``.
"""

from __future__ import annotations

import os

SYSTEM_SOCKET = "/run/qumran/qumrand.sock"


def default_socket_path(uid: int | None = None) -> str:
    """The socket path for ``uid`` (the effective user when None)."""
    override = os.environ.get("QUMRAN_SOCKET")
    if override:
        return override
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return SYSTEM_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}"
    return os.path.join(runtime, "qumran", "qumrand.sock")
