"""The one start-up path every driver shares, and the one re-attach path.

Launch: open the hand-off (sockets and logs, in the daemon's own run directory), build
the driver's command line around those fds, spawn it as the VM's owner, connect to the
monitor socket (it is listening before the process even runs, so there is no waiting for
it to appear) and let the driver open its session — racing the process's exit, bounded
by the driver's timeout. Whatever goes wrong, cancellation included, the process is
killed, and if it said why, its own words become the error.

Attach: the kernel must vouch (SO_PEERCRED) that the recorded pid is what answers on
the monitor socket before the daemon trusts a word from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from qumran.config.spec import VmSpec
from qumran.drivers.base import Driver, EventSink, Instance, NetFds, Owner, RunPaths
from qumran.drivers.process import RUN_DIR_VAR, ProcState, Spawned, spawn
from qumran.drivers.rundir import Handoff, RunDir
from qumran.errors import HypervisorError, Timeout

log = logging.getLogger(__name__)

T = TypeVar("T")
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


class ProcessExited(Exception):
    """The process exited before its monitor session was open."""


async def launch(
    driver: Driver,
    spec: VmSpec,
    paths: RunPaths,
    owner: Owner,
    events: EventSink,
    *,
    seed: bytes | None = None,
    nets: tuple[NetFds, ...] = (),
    restore: int | None = None,
) -> Instance:
    driver.check(spec, owner)  # again at each start: files change after define
    with RunDir(paths) as run_dir:
        offset = run_dir.size(paths.log.name)
        handoff = Handoff(run_dir, serial=spec.serial, seed=seed, nets=nets, restore=restore)
        try:
            argv = driver.command(spec, handoff.numbers)
            log.info("VM %s: starting %s", spec.name, describe(argv))
            env = {**os.environ, RUN_DIR_VAR: str(paths.root)}
            try:
                process = spawn(argv, owner, handoff.log, env=env, pass_fds=handoff.fds)
            except OSError as exc:
                raise HypervisorError(f"cannot run {argv[0]}: {exc.strerror}") from None
            run_dir.write_pid(process.pid)
        finally:
            handoff.close()  # the process has its own copies; its sockets die with it
        monitor: socket.socket | None = None
        try:
            async with asyncio.timeout(driver.start_timeout):
                monitor = await _connect(paths.monitor)
                return await _until_exit(
                    process, driver.open_instance(spec, process, paths, monitor, events)
                )
        except BaseException as exc:  # cancellation too: never leave the process behind
            if monitor is not None:
                monitor.close()
            await kill(process)
            said = run_dir.log_tail(offset)
            if isinstance(exc, TimeoutError):
                raise Timeout(
                    f"{driver.program} for VM {spec.name} did not open its monitor within "
                    f"{driver.start_timeout:g} s; it was killed. Its output: {said or '(none)'}"
                ) from None
            if isinstance(exc, ProcessExited | HypervisorError | OSError):
                raise HypervisorError(
                    f"{driver.program} failed to start VM {spec.name}: "
                    f"{said or str(exc) or 'it exited'}"
                ) from None
            raise


async def attach(
    driver: Driver, spec: VmSpec, paths: RunPaths, pid: int, events: EventSink
) -> Instance:
    process = Spawned(pid)
    state = process.state()
    if state is ProcState.GONE:
        raise HypervisorError(f"the {driver.program} process {pid} of VM {spec.name} is gone")
    monitor = await connect_to_process(paths.monitor, process)
    try:
        async with asyncio.timeout(driver.start_timeout):
            return await driver.open_instance(
                spec, process, paths, monitor, events, stopped=state is ProcState.STOPPED
            )
    except TimeoutError:
        monitor.close()
        raise Timeout(
            f"the monitor of VM {spec.name} did not answer within {driver.start_timeout:g} s"
            " (is another client connected to it?)"
        ) from None
    except BaseException:
        monitor.close()
        raise


async def connect_to_process(path: Path, process: Spawned) -> socket.socket:
    """A connection to the socket at ``path`` in a run directory, refused unless the
    kernel says that ``process`` is what listens there."""
    with RunDir(RunPaths(path.parent)):  # the directory must still be the daemon's alone
        sock = await _connect(path)
    pid, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if pid != process.pid:
        sock.close()
        raise HypervisorError(
            f"{path} is answered by process {pid} (uid {uid}), not by the VM's process"
            f" {process.pid}; not trusting it"
        )
    return sock


async def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        # A listening socket accepts into its backlog at once, running owner or not.
        await asyncio.get_running_loop().sock_connect(sock, str(path))
    except OSError as exc:
        sock.close()
        raise HypervisorError(f"cannot connect to {path}: {exc.strerror}") from None
    return sock


async def _until_exit(process: Spawned, aw: Awaitable[T]) -> T:
    """Await ``aw``, unless ``process`` exits first (ProcessExited)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(aw)
    try:
        pidfd = process.pidfd()
    except ProcessLookupError:
        task.cancel()
        raise ProcessExited() from None
    exited = asyncio.Event()
    loop.add_reader(pidfd, exited.set)
    try:
        waiter = asyncio.ensure_future(exited.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            return task.result()
        raise ProcessExited()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def kill(process: Spawned) -> None:
    """SIGKILL ``process`` and, if we are its parent, reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    if process.popen is not None:
        await asyncio.to_thread(process.popen.wait)


def describe(argv: list[str]) -> str:
    """The argv as one shell-like line, for logs."""
    return " ".join(arg if arg and " " not in arg else repr(arg) for arg in argv)
