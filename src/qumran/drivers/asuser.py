"""Running a few file opens with a user's rights inside a root daemon, without forking.

A root qumrand must not open a user's kernel, initrd or disk with root's rights: root
reads every file, so a definition could name the shadow password file or a file in
another user's private home, and "does not exist" against "permission denied" would tell
the user what lies in folders they cannot read (ARCHITECTURE.md, "Trust boundaries").

Linux keeps credentials per thread; it is glibc that makes ``setresuid`` and
``setgroups`` process-wide, by signalling every thread to repeat the call (the "setxid
broadcast" POSIX asks for). The raw system calls change only the calling thread. So one
dedicated thread switches its own groups, gid and uid to the user's with raw syscalls,
runs the opens, and switches back; the event loop and every other thread stay root
throughout. Only the effective ids change: the real and saved uid stay 0, which is what
lets the thread return to root. That costs a thread hand-off (tens of microseconds), not
a fork. If switching back ever failed, the thread is retired and every later check is
refused: fail closed, never run a user's check as someone else.

Thread rule: the function given to :func:`run_as` runs with the user's rights and must
do nothing but the opens it is for, returning plain values.
"""

from __future__ import annotations

import ctypes
import os
import platform
import pwd
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from qumran.errors import QumranError

T = TypeVar("T")

# System call numbers: <asm/unistd_64.h> on x86_64, <asm-generic/unistd.h> on arm64.
# tests/unit/test_asuser.py checks them against the installed headers.
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {"setgroups": 116, "setresuid": 117, "setresgid": 119},
    "aarch64": {"setgroups": 159, "setresuid": 147, "setresgid": 149},
}
_KEEP = -1  # setresuid/setresgid: leave this id as it is


class CredentialsError(QumranError):
    """The daemon could not take on (or give back) a user's credentials for a check."""


def effective_uid(uid: int) -> int:
    """Whose rights a check for ``uid`` runs with: the user's in a root daemon, else the
    daemon's own (a per-user daemon cannot act as anyone else, and its VMs run as it)."""
    return uid if os.geteuid() == 0 else os.geteuid()


def groups_of(uid: int, gid: int) -> list[int]:
    """The supplementary groups ``uid`` has at login (``gid`` alone if it has no account)."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return [gid]
    return os.getgrouplist(name, gid)


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes | OSError | None:
    """For ``fn`` of :func:`run_as`: the bytes of a regular file, at most ``limit`` + 1 (so
    the caller can tell a file over the limit), None if it is not a regular file, or the
    error opening or reading it. O_NONBLOCK: a FIFO in its place cannot hang the thread."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        return exc
    finally:
        os.close(fd)


def run_as(uid: int, gid: int, fn: Callable[[], T]) -> T:
    """Return ``fn()`` run with the rights of ``uid``, ``gid`` and uid's groups.

    In a root daemon, ``fn`` runs on the credentials thread; when the daemon is not root,
    or ``uid`` is the daemon's own, it runs here with the daemon's rights.
    """
    if os.geteuid() != 0 or uid == os.geteuid():
        return fn()
    groups = groups_of(uid, gid)
    return _worker().submit(_switched, uid, gid, groups, fn).result()


class _Syscalls:
    def __init__(self) -> None:
        numbers = SYSCALLS.get(platform.machine())
        if numbers is None:
            raise CredentialsError(
                f"checking a user's files is not supported on {platform.machine()}"
            )
        self.numbers = numbers
        self.libc = ctypes.CDLL(None, use_errno=True)

    def call(self, name: str, *args: int | ctypes.Array[ctypes.c_uint]) -> None:
        # Each argument as a long: a variadic int would leave a register's top half unset.
        wide = [a if isinstance(a, ctypes.Array) else ctypes.c_long(a) for a in args]
        if self.libc.syscall(ctypes.c_long(self.numbers[name]), *wide) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{name}: {os.strerror(err)}")

    def become(self, uid: int, gid: int, groups: list[int]) -> None:
        """Effective ids and groups of this thread only; real and saved ids unchanged."""
        self.call("setgroups", len(groups), (ctypes.c_uint * len(groups))(*groups))
        self.call("setresgid", _KEEP, gid, _KEEP)
        self.call("setresuid", _KEEP, uid, _KEEP)


class _State:
    syscalls: _Syscalls | None = None
    executor: ThreadPoolExecutor | None = None
    home: tuple[int, int, list[int]] = (0, 0, [])  # the thread's own euid, egid, groups
    broken: str | None = None


_state = _State()
_lock = threading.Lock()


def _worker() -> ThreadPoolExecutor:
    with _lock:
        if _state.broken is not None:
            raise CredentialsError(_state.broken)
        if _state.executor is None:
            _state.syscalls = _Syscalls()
            _state.home = (os.geteuid(), os.getegid(), os.getgroups())
            # One thread: credentials are per thread, and this one is only for checks.
            _state.executor = ThreadPoolExecutor(1, thread_name_prefix="qumran-asuser")
        return _state.executor


def _switched(uid: int, gid: int, groups: list[int], fn: Callable[[], T]) -> T:
    syscalls = _state.syscalls
    assert syscalls is not None  # set before the executor exists
    try:
        syscalls.become(uid, gid, groups)
    except OSError as exc:
        _restore(syscalls)
        raise CredentialsError(f"cannot check files as uid {uid}: {exc.strerror}") from None
    try:
        return fn()
    finally:
        _restore(syscalls)


def _restore(syscalls: _Syscalls) -> None:
    euid, egid, groups = _state.home
    try:
        # uid first: a thread whose euid is the user's may not change its groups.
        syscalls.call("setresuid", _KEEP, euid, _KEEP)
        syscalls.call("setresgid", _KEEP, egid, _KEEP)
        syscalls.call("setgroups", len(groups), (ctypes.c_uint * len(groups))(*groups))
    except OSError as exc:
        _state.broken = f"user file checks are off: giving back root's rights failed ({exc})"
        raise CredentialsError(_state.broken) from None
