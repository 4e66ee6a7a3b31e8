"""What an ordinary local user can do, done for real as that user.

:func:`as_user` forks, drops the child to the user's uid and gid (no supplementary groups,
as a login session of a fresh user has), runs one function and hands its result back
through a pipe. :class:`Racer` does the same in the background, for attacks that race the
daemon: the loop runs until the test sets a shared flag. The attack functions below catch
the errors a sound daemon makes them hit (a PermissionError when planting a symlink is an
attack stopped) and report what they achieved, so the tests can judge the outcome.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import pickle
import pwd
import signal
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def drop_to(user: pwd.struct_passwd) -> None:
    """Become ``user`` for good in this process (real, effective and saved ids)."""
    os.setgroups([])
    os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
    os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)
    os.environ["HOME"] = "/tmp"


def as_user(user: pwd.struct_passwd, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` run in a child process as ``user``; its return value (pickled back)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(user, write, read, fn, args)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    result: T = _unpack(data)
    return result


class Racer:
    """``fn(stop, *args)`` as ``user`` in the background until the context ends.

    ``stop`` is a one-byte shared mapping: the loop checks ``stop[0]`` (a memory read, no
    system call, so a tight loop stays tight) and returns once it is 1.
    """

    def __init__(self, user: pwd.struct_passwd, fn: Callable[..., Any], *args: Any) -> None:
        self.user, self.fn, self.args = user, fn, args
        self.result: Any = None

    def __enter__(self) -> Racer:
        self.stop = mmap.mmap(-1, 1)  # MAP_SHARED | MAP_ANONYMOUS: the child sees our write
        self.read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            _child(self.user, write, self.read, self.fn, (self.stop, *self.args))
        os.close(write)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop[0] = 1
        with os.fdopen(self.read, "rb") as pipe:
            data = pipe.read()
        os.waitpid(self.pid, 0)
        self.stop.close()
        self.result = _unpack(data)


def _child(
    user: pwd.struct_passwd, write: int, read: int, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    """The forked side: never returns into pytest, whatever happens."""
    try:
        os.close(read)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        drop_to(user)
        try:
            payload = ("ok", fn(*args))
        except BaseException:
            payload = ("error", traceback.format_exc())
        with os.fdopen(write, "wb") as pipe:
            pipe.write(pickle.dumps(payload))
    finally:
        os._exit(0)


def _unpack(data: bytes) -> Any:
    if not data:
        raise RuntimeError("the process acting as the other user died without an answer")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise RuntimeError(f"the process acting as the other user failed:\n{value}")
    return value


# --- single steps ----------------------------------------------------------------------


def try_step(step: Callable[[], object]) -> str:
    """Run one attack step; "done", or the error that stopped it (e.g. "EACCES")."""
    try:
        step()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "done"


def plant_symlink(path: str, target: str) -> str:
    """Make ``path`` a symlink to ``target``, replacing whatever is there (atomically, by
    renaming a symlink made beside it, as an attacker would)."""

    def step() -> None:
        temp = f"{path}.planted"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        os.symlink(target, temp)
        os.replace(temp, path)

    return try_step(step)


def read_bytes(path: str) -> bytes | str:
    """The content of ``path``, or the error that kept it from us."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))


def list_dir(path: str) -> list[str] | str:
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))


def http_over_unix(path: str, request: bytes, timeout: float = 10.0) -> bytes:
    """Send a raw HTTP request on a UNIX socket and read the answer to its end."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(request)
        answer = b""
        with contextlib.suppress(TimeoutError):
            while chunk := s.recv(65536):
                answer += chunk
    return answer


def http_request(method: str, path: str, body: bytes = b"", *, close: bool = True) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: qumrand\r\n"
    if close:
        head += "Connection: close\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def vandalise_dir(directory: str, scratch: str) -> dict[str, str]:
    """Everything an owner of ``directory`` could do to what qumrand keeps there: add a
    file and a symlink, replace, rename and remove each entry, change the folder's mode.
    ``scratch`` is a folder of the user's own on the same file system (for renames)."""
    results: dict[str, str] = {}
    results["create"] = try_step(lambda: Path(directory, "planted").write_text("x"))
    results["symlink"] = try_step(lambda: os.symlink("/etc/hostname", f"{directory}/link"))
    results["chmod"] = try_step(lambda: os.chmod(directory, 0o777))
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        results["list"] = errno.errorcode.get(exc.errno or 0, str(exc))
        entries = ["console.sock", "monitor.sock", "console.log", "hypervisor.log", "pid"]
    for name in entries:
        if name in ("planted", "link"):
            continue
        entry = f"{directory}/{name}"
        mine = f"{scratch}/{name}.mine"
        Path(mine).write_text("mine")
        results[f"replace {name}"] = try_step(lambda e=entry, m=mine: os.replace(m, e))  # type: ignore[misc]
        results[f"rename {name}"] = try_step(lambda e=entry: os.rename(e, f"{e}.moved"))  # type: ignore[misc]
        results[f"unlink {name}"] = try_step(lambda e=entry: os.unlink(e))  # type: ignore[misc]
    return results


# --- races -----------------------------------------------------------------------------


def race_log_symlink(stop: mmap.mmap, log: str, target_dir: str) -> int:
    """Plant ``log`` -> ``target_dir/race-N`` as soon as each new run directory lets us;
    returns how many symlinks were planted.

    The folder is held by an O_PATH descriptor (no permission needed on the folder itself),
    so each start's fresh folder is tried from the moment it exists, and a folder is left
    alone once tried until the daemon removes it (a link planted while the daemon empties
    the folder would only make the start fail, which is no use to an attacker).
    """
    folder, name = os.path.split(log)
    planted = 0
    fd = -1
    while stop[0] == 0:
        if fd < 0:
            try:
                fd = os.open(folder, os.O_PATH | os.O_DIRECTORY)
            except OSError:
                continue  # not made yet
            tried = False
        if os.fstat(fd).st_nlink == 0:  # removed: the next start makes a new one
            os.close(fd)
            fd = -1
            continue
        if tried:
            continue
        try:
            os.symlink(f"{target_dir}/race-{planted}", name, dir_fd=fd)
        except FileExistsError:
            tried = True  # the daemon was first
        except OSError:
            pass  # not ours (yet): root makes it, then hands it over
        else:
            planted += 1
            tried = True
    return planted


def race_log_swap(stop: mmap.mmap, log: str, target: str) -> int:
    """Once the daemon has created ``log``, swap it for a symlink to ``target`` (before the
    daemon reads it back); returns how many swaps were made."""
    swaps = 0
    temp = f"{log}.swap"
    while stop[0] == 0:
        try:
            if not Path(log).is_symlink() and Path(log).is_file():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                os.symlink(target, temp)
                os.replace(temp, log)
                swaps += 1
        except OSError:
            continue
    return swaps
