"""Thread and process names as ``ps``/``top`` show them.

- ``comm`` (/proc/PID/comm, ``ps -o comm``, top): PR_SET_NAME, which names the calling
  thread only, cut to 15 bytes (include/uapi/linux/prctl.h; man 2 prctl).
- the command line (/proc/PID/cmdline, ``ps aux``): without a title it is
  ``/usr/bin/python3 .../qumran-vmm --name ...``; with it, ``qumran-vmm --name ...``, the
  way QEMU's shows ``qemu-system-x86_64 -name ...``. The kernel reads it from the process's
  own memory, between ``arg_start`` and ``arg_end`` (/proc/PID/stat fields 48 and 49), where
  exec put the original argv; Python has copied its arguments out by then, so the title is
  written over that area, the rest zeroed. Moving the area instead (PR_SET_MM) would need
  CAP_SYS_RESOURCE.
"""

from __future__ import annotations

import ctypes

PR_SET_NAME = 15
TASK_COMM_LEN = 16

_libc = ctypes.CDLL(None, use_errno=True)


def set_thread_name(name: str) -> None:
    raw = name.encode(errors="replace")[: TASK_COMM_LEN - 1]
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)


def set_process_title(args: list[str]) -> bool:
    """Show ``args`` as the command line (as much as fits), one NUL-ended string each as
    exec left them, so that ``ps`` and ``pgrep -f`` see them as arguments; False if it
    could not be. The program's own arguments always fit: the area held the
    interpreter's path and the script's before them."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # fields from 3 on; comm may hold ')'
        start, end = int(fields[45]), int(fields[46])
    except (OSError, ValueError, IndexError):
        return False
    size = end - start
    if size <= 1:
        return False
    raw = b"\0".join(a.encode(errors="replace") for a in args)[: size - 1]
    ctypes.memmove(start, raw + bytes(size - len(raw)), size)
    return True
