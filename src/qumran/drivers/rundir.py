"""Each running VM's runtime directory: made, owned and only ever opened by the daemon.

``<run-dir>/vms/<id>/`` belongs to the daemon's user and nobody else may write in it
(0700), so nothing in it can be swapped for a symlink by the VM's owner. The hypervisor,
which runs as that owner, never opens anything there: it gets its monitor and console
sockets (already listening) and its log files (opened for appending) as file descriptors
(:class:`Handoff`). Whatever the daemon opens later goes through the directory's own fd
with O_NOFOLLOW, after checking the directory is still the daemon's own — so a directory
an older qumrand had handed to the VM's owner is refused, never followed.
See docs/security.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
from pathlib import Path

from qumran.drivers.base import HandoffFds, NetFds, RunPaths
from qumran.errors import HypervisorError

LOG_TAIL = 2000  # characters of a process's output quoted in an error
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeRunDir(HypervisorError):
    """A run directory that is not the daemon's alone: nothing in it is trusted."""


def create(root: Path) -> RunPaths:
    """A new, empty run directory at ``root`` (an earlier run's files are removed)."""
    root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root.parent, 0o700)
    # rmtree does not follow symlinks out of the tree it removes.
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o700)
    return RunPaths(root)


class RunDir:
    """An open run directory, checked to be the daemon's alone. Use as a context manager."""

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(paths.root, flags)
        except OSError as exc:
            raise UnsafeRunDir(
                f"cannot open the run directory {paths.root}: {exc.strerror}"
            ) from None
        st = os.fstat(self.fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            self.close()
            raise UnsafeRunDir(
                f"the run directory {paths.root} is not the daemon's alone (owner uid "
                f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); nothing in it is trusted"
            )

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def open_append(self, name: str) -> int:
        """``name`` opened for appending (created 0600), never through a symlink."""
        fd = os.open(name, _APPEND, 0o600, dir_fd=self.fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeRunDir(f"{self.paths.root / name} is not a regular file")
        return fd

    def size(self, name: str) -> int:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_size
        except FileNotFoundError:
            return 0

    def read(self, name: str, offset: int = 0, limit: int | None = None) -> bytes:
        """Bytes of ``name`` from ``offset`` (negative: from the end), b"" if it is absent."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return b""
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return b""
            if offset < 0:
                f.seek(0, os.SEEK_END)
                offset = max(0, f.tell() + offset)
            f.seek(offset)
            return f.read(limit if limit is not None else -1)

    def listen(self, name: str) -> socket.socket:
        """A listening UNIX socket bound at ``name``; the directory being the daemon's
        alone, the path is safe to bind (bind has no dir-fd form)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.paths.root / name))
            sock.listen(8)
        except BaseException:
            sock.close()
            raise
        return sock

    def write_file(self, name: str, data: bytes, mode: int = 0o600) -> None:
        """``name`` holding ``data``, whole or not at all: written under a temporary name
        and renamed over it, never through a symlink."""
        temp = f".{name}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=self.fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, mode, dir_fd=self.fd)
        try:
            with open(fd, "wb") as f:
                f.write(data)
            os.replace(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=self.fd)
            raise

    def open_read(self, name: str) -> int:
        """``name`` opened read-only, never through a symlink; it must be a regular file."""
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeRunDir(f"{self.paths.root / name} is not a regular file")
        return fd

    def write_pid(self, pid: int) -> None:
        """The hypervisor's pid, for people and scripts (as libvirt keeps NAME.pid)."""
        name = self.paths.pidfile.name
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{name}.new", dir_fd=self.fd)
        fd = os.open(f"{name}.new", _APPEND | os.O_EXCL, 0o644, dir_fd=self.fd)
        with open(fd, "w") as f:
            f.write(f"{pid}\n")
        # Whole or absent, whenever the daemon dies: readers never see an empty pid file.
        os.replace(f"{name}.new", name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def log_tail(self, offset: int) -> str:
        """What the hypervisor wrote to its log since ``offset``, as one line of text."""
        text = self.read(self.paths.log.name, offset, 1 << 20).decode(errors="replace")
        return " ".join(line.strip() for line in text.splitlines() if line.strip())[-LOG_TAIL:]


class Handoff:
    """What the daemon hands a new hypervisor process, all open: its monitor and console
    sockets (listening), its console log and own log (for appending), its cloud-init
    seed, written here and opened read-only, and its network NICs' TAPs."""

    def __init__(self, run_dir: RunDir, *, serial: bool, seed: bytes | None = None,
                 nets: tuple[NetFds, ...] = (), restore: int | None = None) -> None:  # fmt: skip
        paths = run_dir.paths
        # The NICs' TAPs and the snapshot are the caller's (it opened them, it closes
        # them): passed on only.
        self.nets = nets
        self.restore = restore
        self._sockets: list[socket.socket] = []
        self._files: list[int] = []
        try:
            self.monitor = run_dir.listen(paths.monitor.name)
            self._sockets.append(self.monitor)
            self.console = run_dir.listen(paths.console.name) if serial else None
            if self.console is not None:
                self._sockets.append(self.console)
            self.console_log = run_dir.open_append(paths.console_log.name)
            self._files.append(self.console_log)
            self.log = run_dir.open_append(paths.log.name)
            self._files.append(self.log)
            self.seed: int | None = None
            if seed is not None:
                # Written anew at each start: an edited section reaches the next boot.
                run_dir.write_file(paths.seed.name, seed)
                self.seed = run_dir.open_read(paths.seed.name)
                self._files.append(self.seed)
        except BaseException:
            self.close()
            raise

    @property
    def fds(self) -> tuple[int, ...]:
        nets = (fd for net in self.nets for fd in net.all)
        restore = () if self.restore is None else (self.restore,)
        return (*(s.fileno() for s in self._sockets), *self._files, *nets, *restore)

    @property
    def numbers(self) -> HandoffFds:
        console = self.console.fileno() if self.console is not None else None
        return HandoffFds(self.monitor.fileno(), console, self.console_log, self.seed, self.nets,
                          self.restore)  # fmt: skip

    def close(self) -> None:
        """Close the daemon's copies (the hypervisor keeps its own)."""
        for sock in self._sockets:
            sock.close()
        for fd in self._files:
            os.close(fd)
        self._sockets.clear()
        self._files.clear()
