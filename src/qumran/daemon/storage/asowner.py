"""Work in a pool with its owner's rights: file calls on the credentials thread, and
qemu-img as a child process of the owner's uid, gid and groups.

A root qumrand never creates, reads, renames or deletes a user's volume as root: a
pool's owner could otherwise point it (or a backing file, or an imported file) at what
only root may touch. Every child runs under ``setpriv --pdeathsig KILL``, so a qemu-img
still copying when qumrand is killed dies with it instead of writing on unseen (what it
had written is a hidden ``.part`` file the next scan removes), and with umask 077, so a
new volume is 0600 from its first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable, Sequence
from typing import TypeVar

from qumran.drivers.asuser import groups_of, run_as
from qumran.drivers.base import Owner
from qumran.errors import QumranError

T = TypeVar("T")

# Children get a fixed environment: nothing of the daemon's (or a caller's) leaks in.
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"}


class StorageError(QumranError):
    """A storage tool failed on something the request did not give it (a full disk, a
    broken volume): not the caller's mistake, so a 500, with qemu-img's own words."""

    code = "storage-error"
    http_status = 500


async def call(owner: Owner, fn: Callable[[], T]) -> T:
    """``fn()`` with ``owner``'s rights, off the event loop."""
    return await asyncio.to_thread(run_as, owner.uid, owner.gid, fn)


def _program(name: str) -> str:
    path = shutil.which(name, path=ENV["PATH"])
    if path is None:
        raise StorageError(f"{name} is not installed on this host (it is in the qemu-utils "
                           "package); install it to use storage pools")  # fmt: skip
    return path


async def run(owner: Owner, argv: Sequence[str]) -> tuple[int, str, str]:
    """Run ``argv`` as ``owner``: (exit status, stdout, stderr). Cancelled, the child is
    killed and waited for before the cancellation goes on."""
    as_other = owner.uid != os.geteuid()
    command = [_program("setpriv"), "--pdeathsig", "KILL", "--", _program(argv[0]), *argv[1:]]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
        close_fds=True,
        umask=0o077,
        user=owner.uid if as_other else None,
        group=owner.gid if as_other else None,
        extra_groups=groups_of(owner.uid, owner.gid) if as_other else None,
    )
    try:
        out, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return int(proc.returncode or 0), out.decode(errors="replace"), err.decode(errors="replace")
