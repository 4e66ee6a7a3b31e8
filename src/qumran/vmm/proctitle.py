"""Thread and process names as ``ps``/``top`` show them (/proc/PID/comm), via prctl.

PR_SET_NAME names the calling thread only, and names are cut to 15 bytes
(include/uapi/linux/prctl.h; man 2 prctl).
"""

from __future__ import annotations

import ctypes

PR_SET_NAME = 15
TASK_COMM_LEN = 16

_libc = ctypes.CDLL(None, use_errno=True)


def set_thread_name(name: str) -> None:
    raw = name.encode(errors="replace")[: TASK_COMM_LEN - 1]
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)
