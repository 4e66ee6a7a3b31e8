"""Where the qumrand socket lives: the same answer as ``qumran.config.paths`` gives.

``QUMRAN_SOCKET`` overrides; root's daemon is the system instance under ``/run``; a
user's daemon lives in the user's runtime folder (``$XDG_RUNTIME_DIR``, XDG Base
Directory spec, else ``/run/user/UID`` where systemd-logind puts it) -- the first of them
that exists and is the user's own -- else in ``/tmp/qumran-UID``, a folder private to
the user (``su -``, containers, ssh without a systemd login).
Written with ``os`` alone because every CLI run resolves it (``pathlib`` costs start-up
time); a unit test holds it to ``qumran.config.paths.default_socket_path``.
"""

from __future__ import annotations

import os

SYSTEM_SOCKET = "/run/qumran/qumrand.sock"
USER_RUNTIME_BASE = "/run/user"  # as in qumran.config.paths; tests move both
FALLBACK_BASE = "/tmp"


def _owned_dir(path: str, uid: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid == uid and (st.st_mode & 0o170000) == 0o040000  # S_ISDIR


def default_socket_path(uid: int | None = None) -> str:
    """The socket path for ``uid`` (the effective user when None)."""
    override = os.environ.get("QUMRAN_SOCKET")
    if override:
        return override
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return SYSTEM_SOCKET
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and _owned_dir(xdg, uid):
        return os.path.join(xdg, "qumran", "qumrand.sock")
    logind = f"{USER_RUNTIME_BASE}/{uid}"
    if _owned_dir(logind, uid):
        return os.path.join(logind, "qumran", "qumrand.sock")
    fallback = f"{FALLBACK_BASE}/qumran-{uid}"
    _check_private(fallback, uid)
    return fallback + "/qumrand.sock"


def _check_private(path: str, uid: int) -> None:
    """A folder in /tmp anyone could have made first: only the user's own is trusted, or a
    squatter's daemon would get this user's requests."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # no daemon there yet; the client will say so
    except OSError:
        return
    if st.st_uid != uid or (st.st_mode & 0o170000) != 0o040000 or st.st_mode & 0o077:
        from qumran.errors import ConnectionFailed

        raise ConnectionFailed(
            f"{path} is not a private folder of yours (owner uid {st.st_uid}, mode "
            f"{st.st_mode & 0o7777:o}): qumran does not trust a socket there; remove it, "
            "or set XDG_RUNTIME_DIR or QUMRAN_SOCKET"
        )
