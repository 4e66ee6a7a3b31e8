"""qumrand's start: the definitions loaded, the VMs that kept running while it was away
re-attached (their monitor, console and watcher taken up again, as libvirt's
qemuProcessReconnect does), processes it started but never recorded killed, then
autostart. The :class:`~qumran.daemon.manager.Manager` calls :func:`restore` once, before
the API serves; everything here runs on its behalf and changes state through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from qumran.config.spec import VmSpec
from qumran.config.validate import validate_spec
from qumran.daemon.console import HISTORY_BYTES, ConsoleBroker
from qumran.daemon.domain import Domain, Event, Reason, Running, State, bounded
from qumran.daemon.store import RuntimeRecord, VmRecord
from qumran.drivers import rundir
from qumran.drivers.base import RunPaths
from qumran.drivers.process import ProcState, proc_state, processes_marked
from qumran.errors import QumranError

if TYPE_CHECKING:
    from qumran.daemon.manager import Manager

log = logging.getLogger(__name__)


async def restore(m: Manager) -> None:
    """Load definitions; re-attach to VMs that kept running; then autostart.
    Networks first: a VM's NICs need their bridges."""
    await m.networks.restore(make_default=m._default_network)
    runtimes = m.store.runtimes()
    last_events = m.store.last_events()
    attaching = []
    for record in m.store.vms():
        try:
            spec = validate_spec(record.definition)
        except QumranError as exc:
            log.error("definition of %s no longer validates: %s", record.name, exc)
            continue
        dom = Domain(record, spec)
        dom.restore_reason(last_events.get(record.uuid))
        key = m.store.host_key(record.uuid)
        dom.ssh_host_key = key[1] if key is not None else None
        dom.pending = _pending_spec(record)
        m.domains[record.name] = dom
        rt = runtimes.get(record.uuid)
        if rt is not None:
            attaching.append(reattach(m, dom, rt))
    # All at once: each waits on its own hypervisor's monitor, not on the others. A
    # failure still stops the start-up as before, once every re-attach has ended.
    for failure in await asyncio.gather(*attaching, return_exceptions=True):
        if isinstance(failure, BaseException):
            raise failure
    for dom in m.domains.values():
        if not dom.active:
            m._apply_pending(dom)  # it stopped while the daemon was away
    kill_unrecorded(m, set(runtimes))
    await m.storage.clean_leftovers()  # copies a killed qumrand left half-written
    m.stats.start()
    for dom in list(m.domains.values()):
        if dom.autostart and not dom.active:
            try:
                async with dom.lock:
                    await m._launch(dom, Reason.AUTOSTART)
            except QumranError as exc:
                log.error("autostart of %s failed: %s", dom.name, exc)


def kill_unrecorded(m: Manager, recorded: set[str]) -> None:
    """Kill hypervisor processes of VMs whose start was never recorded: an earlier
    daemon died between spawning one and committing the start, so no client was
    told it started, and left running it would be a VM nobody manages. A VM whose
    start was recorded is never killed here, even if re-attaching to it failed.
    Only a process running as the VM's owner is touched."""
    owners = {str(m._run_dir_of(d)): d for d in m.domains.values()}
    for pid, (run_dir, uid) in processes_marked().items():
        dom = owners.get(run_dir)
        if dom is None or dom.uuid in recorded or uid != dom.owner:
            continue
        log.warning("killing process %d of %s: started but not tracked", pid, run_dir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def reattach(m: Manager, dom: Domain, rt: RuntimeRecord) -> None:
    """Take up a VM recorded as running: its process, monitor and console."""
    if proc_state(rt.pid, rt.start_time) is ProcState.GONE:
        m.store.clear_runtime(dom.uuid)
        m._changed(dom, Event.STOPPED, Reason.GONE, "the process ended while the daemon was away")
        return
    driver = m.drivers.get(rt.driver)
    if driver is None:
        log.error("cannot re-attach to %s: no %r driver in this daemon", dom.name, rt.driver)
        return
    paths = RunPaths(m._run_dir_of(dom))
    if Path(rt.run_dir) != paths.root:
        log.error("cannot re-attach to %s: its run directory was recorded as %s, not %s",
                  dom.name, rt.run_dir, paths.root)  # fmt: skip
        return
    try:
        instance = await driver.attach(dom.spec, paths, rt.pid, m._guest_events(dom))
    except (QumranError, OSError) as exc:
        log.error("cannot re-attach to %s (pid %d): %s", dom.name, rt.pid, exc)
        return
    try:
        with rundir.RunDir(paths) as run_dir:
            seed = run_dir.read(paths.console_log.name, -HISTORY_BYTES)
        console = ConsoleBroker(dom.name, seed=seed)
        await m._open_console(dom, instance, console)
    except (QumranError, OSError) as exc:
        log.error("cannot re-attach to the console of %s (pid %d): %s", dom.name, rt.pid, exc)
        await instance.close()
        return
    run = Running(instance, instance.process, paths, console, started_at=rt.started_at)
    m._adopt(dom, run)
    if instance.process.state() is ProcState.STOPPED:
        # A stopped hypervisor cannot answer its monitor; the supervisor reports
        # "paused (signal)" and SIGCONT brings it back.
        m._changed(dom, Event.REATTACHED, Reason.DAEMON_RESTART, f"pid {rt.pid}",
                   State.RUNNING)  # fmt: skip
        return
    run.paused_by_user = await bounded(instance.is_paused(), dom)
    state = State.PAUSED if run.paused_by_user else State.RUNNING
    m._changed(dom, Event.REATTACHED, Reason.DAEMON_RESTART, f"pid {rt.pid}", state)


def _pending_spec(record: VmRecord) -> VmSpec | None:
    if record.pending is None:
        return None
    try:
        return validate_spec(record.pending)
    except QumranError as exc:
        log.error("the pending definition of %s no longer validates: %s", record.name, exc)
        return None
