"""Saved VMs (docs/vmm.md, "Save and restore"): the daemon's side of snapshot files.

Two kinds of file. A user's own (``qumran save NAME FILE`` / ``qumran restore FILE``):
the hypervisor, running as the VM's owner, writes it; the daemon opens it for a restore
with the owner's rights (:mod:`qumran.drivers.asuser`) and hands the open file over, so
root never opens a user's path. A managed save (``qumran managedsave NAME``): the
daemon's own, in ``saves/`` of its state folder (root's alone), created here and sent to
the hypervisor open, renamed into place once written; the next start resumes from it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from qumran.drivers.asuser import effective_uid, run_as
from qumran.drivers.base import Owner
from qumran.drivers.checks import refused_open
from qumran.errors import InvalidArgument, NotFound
from qumran.vmm.snapshot.file import Head, SnapshotError, read_head

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qumran.config.spec import VmSpec


def open_user_file(path: str, owner: Owner) -> int:
    """``path`` opened read-only with ``owner``'s rights; one line if it cannot be, the
    same whether it is missing or not theirs."""
    if not os.path.isabs(path):
        raise InvalidArgument(f"restore: {path!r} is not an absolute path")
    result = run_as(owner.uid, owner.gid, lambda: _open(path))
    uid = effective_uid(owner.uid)
    if isinstance(result, OSError):
        raise refused_open(f"restore: {path}", result, uid)
    if result is None:
        raise InvalidArgument(f"restore: {path} is not a regular file")
    return result


def _open(path: str) -> int | OSError | None:
    """Runs as the user: open, fstat, nothing else. O_NONBLOCK: a FIFO cannot hang it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def head_of(fd: int, label: str) -> Head:
    """The snapshot's header and machine state, checked (RAM is the hypervisor's to check
    before it runs anything); InvalidArgument naming ``label``."""
    try:
        return read_head(fd, label)
    except SnapshotError as exc:
        raise InvalidArgument(str(exc)) from None
    except OSError as exc:
        raise InvalidArgument(f"{label} cannot be read: {exc.strerror}") from None


def check_fits(head: Head, spec: VmSpec, label: str) -> None:
    """The snapshot must be of this definition's machine: same memory and vCPUs."""
    machine = head.machine
    saved = (machine.get("memory"), machine.get("vcpus"))
    if saved != (spec.memory << 20, spec.vcpus):
        memory = saved[0] >> 20 if isinstance(saved[0], int) else "?"
        raise InvalidArgument(
            f"{label} holds VM {spec.name!r} with {memory} MiB and {saved[1]} vCPUs; its "
            f"definition now has {spec.memory} MiB and {spec.vcpus}: restore needs the "
            "definition it was saved with (qumran edit)"
        )


class ManagedSaves:
    """One file per VM, ``<uuid>.snap``, in a folder only the daemon may open."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "saves"

    def _dir(self) -> int:
        self.root.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            os.close(fd)
            raise InvalidArgument(f"{self.root} is not the daemon's alone; not using it")
        return fd

    def exists(self, uuid: str) -> bool:
        try:
            st = os.lstat(self.root / f"{uuid}.snap")
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode)

    def create(self, uuid: str) -> int:
        """A new ``<uuid>.snap.part``, open for writing (:meth:`commit` names it)."""
        d = self._dir()
        try:
            name = f"{uuid}.snap.part"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=d)
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            return os.open(name, flags, 0o600, dir_fd=d)
        finally:
            os.close(d)

    def commit(self, uuid: str) -> None:
        d = self._dir()
        try:
            os.rename(f"{uuid}.snap.part", f"{uuid}.snap", src_dir_fd=d, dst_dir_fd=d)
            os.fsync(d)
        finally:
            os.close(d)

    def open(self, uuid: str) -> int:
        d = self._dir()
        try:
            return os.open(f"{uuid}.snap", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        finally:
            os.close(d)

    def remove(self, uuid: str, *, part: bool = False) -> bool:
        """Remove the VM's managed save; False if it had none."""
        d = self._dir()
        try:
            os.unlink(f"{uuid}.snap.part" if part else f"{uuid}.snap", dir_fd=d)
        except FileNotFoundError:
            return False
        finally:
            os.close(d)
        return True

    def require(self, uuid: str, name: str) -> None:
        if not self.exists(uuid):
            raise NotFound(f"VM {name!r} has no managed save")
