"""What qumrand says about itself (``GET /v1/daemon``, ``qumran daemon status``).

Stopping and restarting are signals (``qumran daemon stop|restart``: SIGTERM, SIGHUP),
not requests: the kernel then decides who may, as for any process -- root and the
daemon's own user -- and no route of the API can take the daemon down.
"""

from __future__ import annotations

import os
import time
from typing import Any

from qumran import __version__
from qumran.client.schema import DaemonInfo

STARTED_AT = time.time()  # this process image's start: a restart (an exec) renews it


def describe(settings: Any, socket_path: str, socket_source: str, unit: str | None) -> DaemonInfo:
    """The document for a running qumrand with these settings (``qumran.daemon.config``)."""
    return {
        "pid": os.getpid(),
        "uid": os.geteuid(),
        "version": __version__,
        "started_at": STARTED_AT,
        "socket": socket_path,
        "socket_source": socket_source,
        "systemd_unit": unit,
        "config_file": str(settings.config_file) if settings.config_file else None,
        "run_dir": str(settings.run_dir),
        "state_dir": str(settings.state_dir),
        "log_level": settings.log_level,
        "web": f"http://{settings.web}" if settings.web else None,
    }


def daemon_info(state: Any) -> DaemonInfo:
    """The document set at start-up (``app.state.daemon``); a bare one for an app built
    without qumrand around it (tests)."""
    info: DaemonInfo | None = getattr(state, "daemon", None)
    if info is not None:
        return info
    return {
        "pid": os.getpid(), "uid": os.geteuid(), "version": __version__,
        "started_at": STARTED_AT, "socket": "", "socket_source": "qumrand",
        "systemd_unit": None, "config_file": None, "run_dir": "", "state_dir": "",
        "log_level": "info", "web": None,
    }  # fmt: skip
