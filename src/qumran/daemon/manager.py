"""The domain manager: definitions, ownership, lifecycle — the heart of qumrand.

Every operation on a VM takes that VM's lock, so concurrent requests on one VM are
serialised while different VMs proceed in parallel; under the lock it checks again that
the VM is still defined (an undefine may have gone first). State changes are made on the
event loop through the domain's transition table, and each one is an event. Every
background task (a VM's watcher, letting go of a stopped VM) is the manager's, and
:meth:`Manager.close` waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qumran.client.schema import InterfaceInfo
from qumran.config.spec import VmSpec
from qumran.config.validate import validate_spec
from qumran.daemon import hostkeys, nics, reattach, saves, supervisor
from qumran.daemon.console import ConsoleBroker
from qumran.daemon.domain import (
    Domain,
    Event,
    IllegalTransition,
    Reason,
    Running,
    State,
    bounded,
)
from qumran.daemon.events import EventBus
from qumran.daemon.network import Networks
from qumran.daemon.stats import StatsSampler
from qumran.daemon.storage import Storage
from qumran.daemon.storage.resolve import resolve
from qumran.daemon.store import RuntimeRecord, Store, VmRecord
from qumran.drivers import rundir
from qumran.drivers.base import Driver, GuestEvent, Instance, Owner
from qumran.drivers.checks import check_memory
from qumran.drivers.process import ProcState
from qumran.drivers.seed import seed_for
from qumran.drivers.startup import connect_to_process
from qumran.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidState,
    NotFound,
    PermissionDenied,
    QumranError,
)

log = logging.getLogger(__name__)

DESTROY_GRACE_SECONDS = 3.0
# Guest resets this close together are one reboot: firmware resets once more by itself,
# and a guest may try several reset methods in a row (QEMU reports each one).
RESET_BURST_SECONDS = 1.0


@dataclass(frozen=True)
class Caller:
    """Who is asking, as the kernel vouches for it (SO_PEERCRED)."""

    uid: int
    gid: int
    pid: int = 0


class Manager:
    def __init__(self, store: Store, drivers: dict[str, Driver], run_dir: Path, *,
                 manage_networks: bool = False, default_network: bool = False) -> None:  # fmt: skip
        self.store = store
        self.drivers = drivers
        self.run_dir = run_dir
        self.events = EventBus(store)
        self.domains: dict[str, Domain] = {}
        self.stats = StatsSampler(self.domains)
        self.supervisor = supervisor.Supervisor(self._changed)
        self._admin_uid = os.geteuid()  # root, or the user a per-user daemon runs as
        self._tasks: set[asyncio.Task[None]] = set()  # every background task; close() waits
        # Pools and volumes (docs/storage.md); the store's folder is the state directory.
        self.storage = Storage(store, store.path.parent, self.domains, self._admin_uid)
        # Virtual networks (docs/networks.md): bridges, dnsmasq and firewall rules only
        # when asked (qumrand's settings); a Manager made in a test touches no host network.
        self.networks = Networks(store, run_dir, store.path.parent, self._admin_uid,
                                 manage_host=manage_networks)  # fmt: skip
        self._default_network = default_network
        self.saves = saves.ManagedSaves(store.path.parent)
        self.networks.attached = lambda network: nics.running_on(self.domains, network)
        self.networks.defined_on = lambda network: nics.defined_on(self.domains, network)
        self.networks.mac_owner = lambda mac: nics.mac_owner(self.domains, mac)

    # ownership
    def _may_manage(self, caller: Caller, dom: Domain) -> bool:
        return caller.uid in (0, self._admin_uid) or caller.uid == dom.owner

    def visible(self, caller: Caller) -> list[Domain]:
        return [d for d in self.domains.values() if self._may_manage(caller, d)]

    def get(self, caller: Caller, name: str) -> Domain:
        dom = self.domains.get(name)
        if dom is None:
            raise NotFound(f"no VM named {name!r} (see `qumran list --all`)")
        if not self._may_manage(caller, dom):
            raise PermissionDenied(f"VM {name!r} belongs to another user")
        return dom

    @contextlib.asynccontextmanager
    async def _locked(self, caller: Caller, name: str) -> AsyncIterator[Domain]:
        """The VM ``name``, its lock held, still defined: an operation queued behind an
        undefine (or behind an undefine and a new define of the name) finds it gone."""
        dom = self.get(caller, name)
        async with dom.lock:
            if dom.undefined or self.domains.get(name) is not dom:
                raise NotFound(f"no VM named {name!r} (it was undefined meanwhile)")
            yield dom

    def _driver(self, dom: Domain) -> Driver:
        driver = self.drivers.get(dom.spec.hypervisor)
        if driver is None:
            raise InvalidArgument(
                f"VM {dom.name!r} uses hypervisor {dom.spec.hypervisor!r}, "
                f"which this daemon does not offer (it has: {', '.join(self.drivers)})"
            )
        return driver

    # NICs on networks (daemon/nics.py)
    def _with_nics(self, caller: Caller, spec: VmSpec, uid: int, itself: Domain | None) -> VmSpec:
        return nics.prepare(spec, uid, self.networks, self.domains, itself,
                            lambda dom: self._may_manage(caller, dom))  # fmt: skip

    def interfaces(self, caller: Caller, name: str) -> list[InterfaceInfo]:
        """The VM's NICs, with each network NIC's TAP and leased address (domiflist)."""
        return self.interfaces_of(self.get(caller, name))

    def interfaces_of(self, dom: Domain) -> list[InterfaceInfo]:
        """As :meth:`interfaces`, for a VM the caller was already allowed to see."""
        return nics.interfaces(dom.spec, dom.uuid, dom.run is not None, self.networks)

    # definitions
    async def define(
        self, caller: Caller, doc: Any, *, force: bool = False, uuid: str | None = None
    ) -> Domain:
        """``uuid``: keep this one (a libvirt XML's ``<uuid>``) instead of making one."""
        spec = validate_spec(doc)
        check_memory(spec, force=force)
        driver = self.drivers.get(spec.hypervisor)
        if driver is None:
            raise InvalidArgument(f"hypervisor: {spec.hypervisor!r} is not available here")
        owner = Owner(caller.uid, caller.gid)
        driver.check(await resolve(self.storage.registry, spec, owner), owner)
        if spec.name in self.domains:
            raise AlreadyExists(already_exists(spec.name))
        spec = self._with_nics(caller, spec, caller.uid, None)
        if uuid is not None:
            try:
                uuid = str(uuidlib.UUID(uuid))
            except ValueError:
                raise InvalidArgument(f"uuid: {uuid[:40]!r} is not a UUID") from None
            taken = [d.name for d in self.domains.values() if d.uuid == uuid]
            if taken:
                raise AlreadyExists(f"VM {taken[0]!r} already has the uuid {uuid}")
        record = VmRecord(
            uuid=uuid or str(uuidlib.uuid4()),
            name=spec.name,
            owner=caller.uid,
            owner_gid=caller.gid,
            definition=spec.model_dump(mode="json"),
            autostart=False,
        )
        dom = Domain(record, spec)
        key = await hostkeys.make(spec)
        with self.store.transaction():  # the definition, its key and event: one commit
            self.store.add_vm(record)
            if key is not None:
                self.store.set_host_key(record.uuid, key.private, key.public)
                dom.ssh_host_key = key.public
            self._changed(dom, Event.DEFINED, Reason.DEFINED)
        self.domains[spec.name] = dom
        return dom

    async def redefine(self, caller: Caller, name: str, doc: Any, *, force: bool = False) -> Domain:
        """Replace the definition of ``name`` (``qumran edit``). A shut-off VM takes it at
        once; a running one keeps its own until it stops, and starts with this one next
        (as libvirt keeps a running domain's live and inactive configurations)."""
        async with self._locked(caller, name) as dom:
            spec = validate_spec(doc)
            if spec.name != name:
                raise InvalidArgument(
                    f"name: renaming a VM ({name!r} to {spec.name!r}) is not supported; keep "
                    "the name, or define a new VM and undefine this one"
                )
            check_memory(spec, force=force)
            driver = self.drivers.get(spec.hypervisor)
            if driver is None:
                raise InvalidArgument(f"hypervisor: {spec.hypervisor!r} is not available here")
            # The files are the VM owner's to open, whoever edits it (root may).
            owner = Owner(dom.owner, dom.record.owner_gid)
            driver.check(await resolve(self.storage.registry, spec, owner), owner)
            spec = self._with_nics(caller, spec, dom.owner, dom)
            definition = spec.model_dump(mode="json")
            if dom.active:
                self.store.set_pending(dom.uuid, definition)
                dom.record = dataclasses.replace(dom.record, pending=definition)
                dom.pending = spec
                detail = "definition updated; the VM uses it from its next start"
            else:
                self.store.set_definition(dom.uuid, definition)
                dom.record = dataclasses.replace(dom.record, definition=definition, pending=None)
                dom.spec, dom.pending = spec, None
                detail = "definition updated"
            # Not a change of state: the state and its reason stay (a restart keeps them).
            self.events.emit(dom.uuid, dom.name, dom.owner, Event.DEFINED, dom.state,
                             dom.reason, detail)  # fmt: skip
        return dom

    def _apply_pending(self, dom: Domain) -> None:
        """A stopped VM takes the definition saved for its next start."""
        if dom.pending is None or dom.record.pending is None:
            return
        self.store.set_definition(dom.uuid, dom.record.pending)
        definition = dom.record.pending
        dom.record = dataclasses.replace(dom.record, definition=definition, pending=None)
        dom.spec, dom.pending = dom.pending, None

    async def undefine(self, caller: Caller, name: str) -> None:
        async with self._locked(caller, name) as dom:
            if dom.active:
                raise InvalidState(f"VM {name!r} is {dom.state.value}; destroy it first")
            self.saves.remove(dom.uuid)  # a managed save goes with its VM
            with self.store.transaction():  # the removal and its event: one commit
                self.store.remove_vm(dom.uuid)
                self._changed(dom, Event.UNDEFINED, Reason.UNDEFINED)  # marks it: queued ops stop
            del self.domains[name]

    async def set_autostart(self, caller: Caller, name: str, enabled: bool) -> Domain:
        async with self._locked(caller, name) as dom:
            self.store.set_autostart(dom.uuid, enabled)
            dom.autostart = enabled
        return dom

    # lifecycle
    async def start(self, caller: Caller, name: str, reason: Reason = Reason.BOOTED) -> Domain:
        async with self._locked(caller, name) as dom:
            if dom.active:
                raise InvalidState(f"VM {name!r} is already {dom.state.value}")
            await self._launch(dom, reason)
        return dom

    async def _launch(self, dom: Domain, reason: Reason, restore: int | None = None) -> None:
        """``restore``: a snapshot file to resume, open. Without one, a managed save is
        resumed (and removed once the VM runs from it)."""
        own = self.drivers.get(dom.spec.hypervisor)
        if restore is None and own is not None and own.snapshots and self.saves.exists(dom.uuid):
            fd = self.saves.open(dom.uuid)
            label = f"the managed save of VM {dom.name!r}"
            try:
                saves.check_fits(await asyncio.to_thread(saves.head_of, fd, label), dom.spec,
                                 label)  # fmt: skip
                await self._launch(dom, Reason.RESTORED, restore=fd)
            except QumranError as exc:
                raise type(exc)(f"{exc.message} (the managed save is kept; `qumran "
                                f"managedsave-remove {dom.name}` to boot afresh)") from None
            finally:
                os.close(fd)
            self.saves.remove(dom.uuid)
            return
        driver = self._driver(dom)
        owner = Owner(dom.owner, dom.record.owner_gid)
        # Volumes become paths here, each start: the driver sees files, never volume names.
        spec = await resolve(self.storage.registry, dom.spec, owner)
        # The seed is made anew at each start, so an edited cloud_init section (or
        # user_data file) reaches the guest at its next boot.
        host_key = await hostkeys.of(self.store, dom)
        seed = await asyncio.to_thread(seed_for, spec, dom.uuid, owner, host_key)
        # The TAPs, on the networks' bridges; the hypervisor keeps them alive, and our
        # copies are closed whatever happens (a failed start leaves no TAP).
        nets = await nics.open_nics(spec, dom.uuid, owner, self.networks)
        try:
            paths = rundir.create(self._run_dir_of(dom))
            instance = await driver.launch(
                spec, paths, owner, self._guest_events(dom), seed=seed, nets=nets,
                restore=restore,
            )
        finally:
            nics.close_nics(nets)
        process = instance.process
        console = ConsoleBroker(dom.name)
        try:
            try:
                await self._open_console(dom, instance, console)
            except (QumranError, OSError) as exc:
                raise InvalidState(f"VM {dom.name!r}: cannot attach its console: {exc}") from None
            run = Running(instance, process, paths, console, started_at=time.time())
            self.store.set_runtime(
                RuntimeRecord(
                    dom.uuid,
                    dom.spec.hypervisor,
                    process.pid,
                    process.start_time,
                    str(paths.root),
                    run.started_at,
                )
            )
        except BaseException:  # not recorded: a process nobody would track
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            await console.close()
            await instance.close()
            raise
        self._adopt(dom, run)
        self._changed(dom, Event.STARTED, reason, f"pid {process.pid}")

    def _run_dir_of(self, dom: Domain) -> Path:
        """The VM's run directory: the daemon's alone (drivers/rundir.py), not the owner's."""
        return self.run_dir / "vms" / dom.uuid[:13]

    @staticmethod
    async def _open_console(dom: Domain, instance: Instance, console: ConsoleBroker) -> None:
        if not dom.spec.serial:
            console.closed.set()  # no serial console: viewers are told it is closed
            return
        await console.open(await connect_to_process(instance.paths.console, instance.process))

    def _adopt(self, dom: Domain, run: Running) -> None:
        dom.run = run
        dom.exited.clear()
        run.watcher = self._spawn(self.supervisor.watch(dom, run), name=f"watch {dom.name}")
        self.stats.started(dom)

    async def shutdown(self, caller: Caller, name: str) -> Domain:
        async with self._locked(caller, name) as dom:
            run = self._running(dom)
            if dom.state is State.PAUSED:
                raise InvalidState(f"VM {name!r} is paused; resume it before shutting it down")
            self._require(dom, Event.SHUTDOWN, "shut down")
            await bounded(run.instance.powerdown(), dom)
            self._changed(dom, Event.SHUTDOWN, Reason.USER, "ACPI power button pressed")
        return dom

    async def destroy(self, caller: Caller, name: str) -> Domain:
        async with self._locked(caller, name) as dom:
            run = self._running(dom)
            run.exit_reason = Reason.DESTROYED
            await self._kill(dom, run)
        return dom

    async def _kill(self, dom: Domain, run: Running) -> None:
        pid = run.process.pid
        if run.process.state() is ProcState.RUNNING:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # let the hypervisor flush its disks
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DESTROY_GRACE_SECONDS):
                    await dom.exited.wait()
        if not dom.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            async with asyncio.timeout(10):
                await dom.exited.wait()

    async def reboot(self, caller: Caller, name: str) -> Domain:
        """Ask the guest to reboot; the guest's own reset, when it comes, is a "reset" event."""
        async with self._locked(caller, name) as dom:
            run = self._running_unstopped(dom)
            self._require(dom, Event.REBOOT_REQUESTED, "rebooted")
            await bounded(run.instance.request_reboot(), dom)
            self._changed(dom, Event.REBOOT_REQUESTED, Reason.USER, "ctrl-alt-del")
        return dom

    async def reset(self, caller: Caller, name: str) -> Domain:
        """Hard reset: the guest restarts at once, unsaved data in it is lost."""
        async with self._locked(caller, name) as dom:
            run = self._running_unstopped(dom)
            self._require(dom, Event.REBOOTED, "reset")
            await bounded(run.instance.reset(), dom)
            run.last_reset = time.monotonic()  # the firmware's own reset that may follow
            self._changed(dom, Event.REBOOTED, Reason.USER, "reset")
        return dom

    def _running_unstopped(self, dom: Domain) -> Running:
        run = self._running(dom)
        if run.stopped_by_signal:
            raise InvalidState(f"VM {dom.name!r} is stopped by a signal; resume it first")
        return run

    async def suspend(self, caller: Caller, name: str) -> Domain:
        async with self._locked(caller, name) as dom:
            run = self._running(dom)
            if dom.state is State.PAUSED:
                raise InvalidState(f"VM {name!r} is already paused")
            self._require(dom, Event.SUSPENDED, "suspended")
            await bounded(run.instance.pause(), dom)
            run.paused_by_user = True
            self._changed(dom, Event.SUSPENDED, Reason.USER)
        return dom

    async def resume(self, caller: Caller, name: str) -> Domain:
        async with self._locked(caller, name) as dom:
            run = self._running(dom)
            if dom.state is not State.PAUSED:
                raise InvalidState(f"VM {name!r} is {dom.state.value}, not paused")
            if run.stopped_by_signal:
                os.kill(run.process.pid, signal.SIGCONT)
                run.stopped_by_signal = False
            if run.paused_by_user or await bounded(run.instance.is_paused(), dom):
                await bounded(run.instance.resume(), dom)
                run.paused_by_user = False
            self._changed(dom, Event.RESUMED, Reason.USER)
        return dom

    def _running(self, dom: Domain) -> Running:
        if dom.run is None:
            raise InvalidState(f"VM {dom.name!r} is not running")
        return dom.run

    def _require(self, dom: Domain, event: Event, verb: str) -> None:
        """Refuse an operation whose event the state does not allow, before acting."""
        if not dom.allows(event):
            raise InvalidState(f"VM {dom.name!r} is {dom.state.value}; it cannot be {verb} now")

    # state changes, from operations, the supervisor and the hypervisor
    def _changed(
        self,
        dom: Domain,
        event: Event,
        reason: Reason,
        detail: str = "",
        state: State | None = None,
    ) -> None:
        """Apply ``event`` through the domain's transition table, then record it."""
        if event is Event.STOPPED and dom.run is not None:
            # The process is gone whatever the table says: let go of it in every case.
            run, dom.run = dom.run, None
            self.store.clear_runtime(dom.uuid)
            self._spawn(_release(run), name=f"release {dom.name}")
            self._apply_pending(dom)
            dom.exited.set()
        try:
            new = dom.apply(event, reason, state)
        except IllegalTransition as exc:
            log.error("bug: VM %s: %s (%s, %s); not applied", dom.name, exc, reason.value,
                      detail)  # fmt: skip
            return
        self.events.emit(dom.uuid, dom.name, dom.owner, event, new, reason, detail)

    def _guest_events(self, dom: Domain) -> Any:
        def on_event(event: GuestEvent, detail: str) -> None:
            run = dom.run
            if run is None:
                return
            match event:
                case GuestEvent.SHUTDOWN:
                    run.guest_shutdown = True
                    if dom.state is not State.SHUTDOWN:
                        self._changed(dom, Event.SHUTDOWN, Reason.GUEST, detail)
                case GuestEvent.RESET:
                    now = time.monotonic()
                    if run.last_reset is not None and now - run.last_reset < RESET_BURST_SECONDS:
                        log.debug("vm %s: one more reset in the same reboot: %s", dom.name, detail)
                        return
                    run.last_reset = now
                    self._changed(dom, Event.RESET, Reason.GUEST, detail)
                case GuestEvent.CRASH:
                    self._changed(dom, Event.CRASHED, Reason.CRASHED, detail)
                case GuestEvent.STOP | GuestEvent.RESUME:
                    pass  # our own suspend/resume; SIGSTOP is seen by the supervisor

        return on_event

    # background tasks
    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task the manager owns: its failure is logged, and close() waits for it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s failed: %s", task.get_name(), exc)
            log.debug("%s failed", task.get_name(), exc_info=exc)

    # daemon start and stop
    async def restore(self) -> None:
        """Load definitions, re-attach to the VMs that kept running, autostart (reattach.py)."""
        await reattach.restore(self)

    async def close(self) -> None:
        """Let go of every VM without stopping it (the VMs outlive the daemon), and wait
        for every background task: watchers end, releases of stopped VMs finish."""
        await self.stats.stop()
        self.supervisor.close()
        for dom in self.domains.values():
            if dom.run is not None and dom.run.watcher is not None:
                dom.run.watcher.cancel()
        while self._tasks:  # a task may start another (a watcher's last word: a release)
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for dom in self.domains.values():
            if dom.run is not None:
                await _release(dom.run)


def already_exists(name: str) -> str:
    return (
        f"a VM named {name!r} already exists: change it with `qumran edit {name}` (its "
        f"definition: `qumran dumpdef {name}`), or remove it with `qumran undefine {name}`"
    )


async def _release(run: Running) -> None:
    """Close our connections to a hypervisor process (not the process itself)."""
    await run.console.close()
    with contextlib.suppress(Exception):
        await run.instance.close()
