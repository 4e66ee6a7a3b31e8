"""save, restore and managedsave: the daemon's verbs for saved VMs (docs/vmm.md, "Save
and restore"), on the manager's VMs, as reattach.py's start-up work is. The files
themselves (a user's, opened with their rights; the daemon's own managed saves) are
:mod:`qumran.daemon.saves`; resuming a managed save at a start is the manager's
``_launch``."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from qumran.daemon.domain import Domain, Reason, bounded
from qumran.daemon.saves import check_fits, head_of, open_user_file
from qumran.drivers.base import Driver, Owner
from qumran.errors import InvalidArgument, InvalidState

if TYPE_CHECKING:
    from qumran.daemon.manager import Caller, Manager

SAVE_SECONDS = 300.0  # writing a snapshot: RAM to disk, seconds under a slow host


def _snapshot_driver(m: Manager, dom: Domain, verb: str) -> Driver:
    driver = m._driver(dom)
    if not driver.snapshots:
        raise InvalidState(
            f"VM {dom.name!r} runs on {driver.program} (hypervisor: {driver.name}), which "
            f"qumrand cannot {verb} yet; only hypervisor: native VMs (qumran-vmm) can"
        )
    return driver


async def save(m: Manager, caller: Caller, name: str, path: str) -> Domain:
    """Snapshot the running VM to ``path`` (written by its hypervisor, as the VM's
    owner), then end it: shut off, reason "saved"."""
    if not os.path.isabs(path):
        raise InvalidArgument(f"file: {path!r} is not an absolute path")
    async with m._locked(caller, name) as dom:
        _snapshot_driver(m, dom, "save")
        run = m._running_unstopped(dom)
        await bounded(run.instance.save(path), dom, SAVE_SECONDS)
        run.exit_reason = Reason.SAVED
        await m._kill(dom, run)
    return dom


async def managed_save(m: Manager, caller: Caller, name: str) -> Domain:
    """Snapshot the running VM into the daemon's own file for it, then end it; its
    next start resumes from there."""
    async with m._locked(caller, name) as dom:
        _snapshot_driver(m, dom, "save")
        run = m._running_unstopped(dom)
        fd = m.saves.create(dom.uuid)
        try:
            await bounded(run.instance.save(fd), dom, SAVE_SECONDS)
        except BaseException:
            m.saves.remove(dom.uuid, part=True)
            raise
        finally:
            os.close(fd)
        m.saves.commit(dom.uuid)
        run.exit_reason = Reason.SAVED
        await m._kill(dom, run)
    return dom


async def managed_save_remove(m: Manager, caller: Caller, name: str) -> Domain:
    async with m._locked(caller, name) as dom:
        m.saves.require(dom.uuid, name)
        m.saves.remove(dom.uuid)
    return dom


async def restore_file(m: Manager, caller: Caller, path: str) -> Domain:
    """Start the VM the snapshot at ``path`` names (the caller's, shut off) from it.
    The file is opened with the caller's rights, and again with the owner's when
    they differ (root restoring a user's VM): the VM runs as its owner."""
    fd = open_user_file(path, Owner(caller.uid, caller.gid))
    try:
        head = await asyncio.to_thread(head_of, fd, path)
        vm = head.machine.get("name")
        if not isinstance(vm, str):
            raise InvalidArgument(f"{path} is damaged: it names no VM")
        async with m._locked(caller, vm) as dom:
            if dom.active:
                raise InvalidState(f"VM {vm!r} is {dom.state.value}; {path} restores a VM "
                                   "that is shut off (destroy it first)")  # fmt: skip
            _snapshot_driver(m, dom, "restore")
            check_fits(head, dom.spec, path)
            if dom.owner != caller.uid:  # the owner must be able to read it too
                os.close(fd)
                fd = -1
                fd = open_user_file(path, Owner(dom.owner, dom.record.owner_gid))
            await m._launch(dom, Reason.RESTORED, restore=fd)
    finally:
        if fd >= 0:
            os.close(fd)
    return dom
