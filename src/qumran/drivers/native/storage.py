"""qemu-storage-daemon for a native VM's qcow2 disks: QEMU's block layer, as a process of
its own, serving each disk to qumran-vmm as a vhost-user-blk socket.

One storage daemon per VM, started before qumran-vmm as the VM's owner (it opens the
images with the owner's rights, as qumran-vmm does for raw ones), and killed when
qumran-vmm exits. Raw disks stay in qumran-vmm (its own virtio-blk, BENCHMARKS.md).

Files:
- ``storage.sock`` (the VM's run directory, the daemon's alone): its QMP monitor, bound
  by us and handed over listening, put last on the command line so that its greeting
  means every export is up; a failure to open a disk (a lock held by another VM) is an
  exit with QEMU's words instead. Also how a restarted daemon finds it again
  (SO_PEERCRED on that socket vouches for the pid written in ``storage.pid``).
- ``<run>/vhost-user/<vm>/disk<N>.sock``: the vhost-user sockets, in a directory owned by
  the VM's owner (0700; its parent 0711 and the daemon's) because both ends run as the
  owner and connect by path (qumran-vmm connects again after a storage daemon restart).
  The daemon never opens anything in it; it only makes and removes the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from qumran.config.spec import VmSpec
from qumran.drivers.base import GuestEvent, Owner, RunPaths
from qumran.drivers.process import RUN_DIR_VAR, ProcState, Spawned, processes_marked, spawn
from qumran.drivers.rundir import RunDir
from qumran.errors import HypervisorError, InvalidState, QumranError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qumran.drivers.qemu.monitor import QmpMonitor

log = logging.getLogger(__name__)

QSD = "qemu-storage-daemon"
MONITOR = "storage.sock"
PIDFILE = "storage.pid"
LOG = "storage.log"
START_TIMEOUT = 30.0
SESSION_TIMEOUT = 3.0  # one try at the monitor's greeting and negotiation (see _open)
RETRY_PAUSE = 0.05
MAX_QUEUES = 16  # what qumran-vmm's vhost-user-blk takes
STOP_GRACE = 5.0  # seconds after SIGTERM to flush a qcow2's tables before SIGKILL
SERVED_FORMATS = frozenset({"qcow2"})  # raw: qumran-vmm's own virtio-blk is faster


def binary() -> str | None:
    return shutil.which(QSD)


@dataclass(frozen=True)
class Export:
    index: int  # in spec.disks
    path: Path
    format: str
    readonly: bool


def exports_of(spec: VmSpec) -> list[Export]:
    return [Export(i, d.host_path, d.format or "raw", d.readonly)
            for i, d in enumerate(spec.disks) if d.format in SERVED_FORMATS]  # fmt: skip


def socket_dir(paths: RunPaths) -> Path:
    """The owner's directory for this VM's vhost-user sockets (see the module docstring)."""
    return paths.root.parent.parent / "vhost-user" / paths.root.name


def socket_path(paths: RunPaths, index: int) -> Path:
    return socket_dir(paths) / f"disk{index}.sock"


def prepare_socket_dir(paths: RunPaths, owner: Owner) -> Path:
    directory = socket_dir(paths)
    directory.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(directory.parent, 0o711)  # reachable, not listable: each VM's own is 0700
    shutil.rmtree(directory, ignore_errors=True)  # an earlier run's; rmtree follows no link
    directory.mkdir(mode=0o700)
    if owner.uid != os.geteuid():
        os.chown(directory, owner.uid, owner.gid)
    return directory


def build_argv(program: str, exports: list[Export], paths: RunPaths, monitor_fd: int,
               queues: int = 1) -> list[str]:  # fmt: skip
    argv = [program]
    for e in exports:
        # The file node: cache.direct off (the host's page cache, as qumran-vmm's raw disks),
        # locking on (QEMU's own image locks: one writer, or readers only).
        argv += ["--blockdev", f"driver=file,node-name=file{e.index},filename={_opt(e.path)}"
                 f",read-only={'on' if e.readonly else 'off'}"]  # fmt: skip
        argv += ["--blockdev", f"driver={e.format},node-name=disk{e.index},file=file{e.index}"
                 f",read-only={'on' if e.readonly else 'off'}"]  # fmt: skip
        argv += ["--export", f"type=vhost-user-blk,id=export{e.index},node-name=disk{e.index}"
                 f",addr.type=unix,addr.path={_opt(socket_path(paths, e.index))}"
                 f",writable={'off' if e.readonly else 'on'},num-queues={queues}"]  # fmt: skip
    # Last: options are carried out in order, so the greeting comes after every export.
    argv += ["--chardev", f"socket,id=monitor,fd={monitor_fd},server=on,wait=off",
             "--monitor", "chardev=monitor"]  # fmt: skip
    return argv


def _opt(path: Path) -> str:
    """A path as a QEMU option value: a comma is written twice."""
    return str(path).replace(",", ",,")


_LOCKED = re.compile(r"node-name=(?:disk|file)(\d+)[^:]*: Failed to get \"?(\w+)\"? lock")


def start_error(said: str, exports: list[Export], vm: str) -> QumranError:
    """QEMU's words on a failed start, in the terms of the VM's definition."""
    m = _LOCKED.search(said)
    if m is not None:
        index = int(m.group(1))
        path = next((e.path for e in exports if e.index == index), "?")
        return InvalidState(
            f"disks[{index}]: {path} is in use by another VM (its {m.group(2)} lock is held;"
            " QEMU and qumran-vmm lock images the same way); stop that VM first"
        )
    return HypervisorError(f"{QSD} failed to start for VM {vm}: {said or 'it exited'}")


def _silent_end(status: int | None, exc: BaseException) -> str:
    """What is known of a storage daemon that failed without a word in its log."""
    if status is None:
        return f"it did not answer on its monitor ({type(exc).__name__}: {exc})"
    if status < 0:
        return f"it was killed by {signal.Signals(-status).name}, having written nothing"
    return f"it exited with status {status}, having written nothing"


class StorageDaemon:
    """One VM's qemu-storage-daemon: its process and its QMP session."""

    def __init__(self, vm: str, process: Spawned, monitor: QmpMonitor, paths: RunPaths) -> None:
        self.vm, self.process, self.monitor, self.paths = vm, process, monitor, paths

    @classmethod
    async def start(cls, spec: VmSpec, exports: list[Export], paths: RunPaths,
                    owner: Owner) -> StorageDaemon:  # fmt: skip
        program = binary()
        if program is None:
            raise HypervisorError(f"{QSD} is not installed (Debian: qemu-utils)")
        await kill_leftovers(paths, owner)
        prepare_socket_dir(paths, owner)
        with RunDir(paths) as run_dir:
            listening = run_dir.listen(MONITOR)
            output = run_dir.open_append(LOG)
            offset = run_dir.size(LOG)
            try:
                # A queue per vCPU, as QEMU's virtio-blk-pci has by default.
                queues = min(spec.vcpus, MAX_QUEUES)
                argv = build_argv(program, exports, paths, listening.fileno(), queues)
                env = {**os.environ, RUN_DIR_VAR: str(paths.root)}
                try:
                    process = spawn(argv, owner, output, env=env, pass_fds=[listening.fileno()])
                except OSError as exc:
                    raise HypervisorError(f"cannot run {program}: {exc.strerror}") from None
            finally:
                listening.close()
                os.close(output)
            run_dir.write_file(PIDFILE, f"{process.pid}\n".encode(), 0o644)
            try:
                monitor = await cls._open(spec.name, paths, process)
            except BaseException as exc:
                status = process.reap()  # before the kill: how it ended, if it had
                await kill(process)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                text = run_dir.read(LOG, offset, 1 << 16).decode(errors="replace")
                said = " ".join(line.strip() for line in text.splitlines() if line.strip())
                raise start_error(said or _silent_end(status, exc), exports, spec.name) from None
        return cls(spec.name, process, monitor, paths)

    @classmethod
    async def adopt(cls, spec: VmSpec, paths: RunPaths) -> StorageDaemon | None:
        """The storage daemon an earlier qumrand started for this VM, if it still runs."""
        try:
            with RunDir(paths) as run_dir:
                pid = int(run_dir.read(PIDFILE).decode().strip() or 0)
        except (OSError, ValueError, QumranError):
            return None
        process = Spawned(pid)
        if not pid or process.state() is ProcState.GONE or not _is_ours(pid, paths):
            return None
        try:
            monitor = await cls._open(spec.name, paths, process)
        except (QumranError, OSError, TimeoutError) as exc:
            said = ""
            if process.state() is ProcState.GONE:  # what it said before it went
                with contextlib.suppress(OSError, QumranError), RunDir(paths) as run_dir:
                    said = run_dir.read(LOG, -800).decode(errors="replace").strip()
                said = f"; it has exited, its log ending: {said or '(empty)'}"
            log.error("VM %s: cannot re-attach to its storage daemon %d: %s%s", spec.name, pid,
                      exc, said)  # fmt: skip
            return None
        return cls(spec.name, process, monitor, paths)

    @staticmethod
    async def _open(vm: str, paths: RunPaths, process: Spawned) -> QmpMonitor:
        """The QMP session on ``storage.sock``, connecting again while the daemon lives
        and a session does not come up.

        QEMU 7.2 has a start-up race: for a moment both its main thread and its monitor
        I/O thread watch the monitor's socket, and a client that connects then may get
        the greeting and no answer, or the connection closed (measured: 1 start in 25 to
        50, the daemon alive and well). A new connection is answered. (Fixed upstream in
        QEMU's monitor/qmp.c, 2025; the storage daemon meets it more than QEMU itself
        because its main loop starts right after the monitor is made.)"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            left = deadline - loop.time()
            try:
                return await StorageDaemon._session(vm, paths, min(SESSION_TIMEOUT, left))
            except (HypervisorError, TimeoutError) as exc:
                if process.state() is ProcState.GONE or loop.time() >= deadline:
                    raise
                said = exc.message if isinstance(exc, HypervisorError) else "no answer"
                log.info("VM %s: the storage daemon's monitor: %s; connecting again", vm, said)
                await asyncio.sleep(RETRY_PAUSE)

    @staticmethod
    async def _session(vm: str, paths: RunPaths, timeout: float) -> QmpMonitor:
        """One try. No SO_PEERCRED check, unlike qumran-vmm's monitor: QEMU does not
        listen() again on a socket it inherits, so the kernel names the daemon that bound
        it. None is needed: that socket sits in the daemon's own directory and only the
        storage daemon was ever given it."""
        from qumran.drivers.qemu.monitor import QmpMonitor

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, str(paths.root / MONITOR))
        except OSError as exc:
            sock.close()
            where = paths.root / MONITOR
            raise HypervisorError(f"cannot connect to {where}: {exc.strerror}") from None
        session = QmpMonitor(f"{vm} (storage)", _no_events)
        try:
            async with asyncio.timeout(timeout):
                await session.connect(sock)
        except BaseException:
            await session.close()
            sock.close()
            raise
        return session

    async def block_io(self) -> tuple[int, int]:
        """Bytes the storage daemon read from and wrote to its images, from /proc/PID/io:
        qcow2's own I/O included (a first write to a cluster writes all 64 KiB of it).
        QEMU 7.2 keeps no statistics for an export's anonymous block backend
        (query-blockstats lists only named ones). rchar/wchar count read(2)/write(2)-family
        calls; the sockets go through recvmsg/sendmsg and are not counted, the kick and
        call eventfds are, at 8 bytes a request."""
        try:
            with open(f"/proc/{self.process.pid}/io") as f:
                fields = dict(line.split(":", 1) for line in f.read().splitlines())
        except (OSError, ValueError):
            return 0, 0
        return int(fields.get("rchar", 0)), int(fields.get("wchar", 0))

    async def stop(self) -> None:
        """Let the daemon flush (SIGTERM: qcow2 tables written out), then kill it."""
        await self.monitor.close()
        await kill(self.process, STOP_GRACE)
        shutil.rmtree(socket_dir(self.paths), ignore_errors=True)

    async def close(self) -> None:
        """Let go of it, leaving it running (qumrand stops; the VM goes on)."""
        await self.monitor.close()


async def kill_leftovers(paths: RunPaths, owner: Owner) -> None:
    """A storage daemon of an earlier run of this VM, still holding its images: its VM
    ended while qumrand was away, so nobody stopped it."""
    for pid, (run_dir, uid) in processes_marked().items():
        if (
            run_dir == str(paths.root)
            and uid == owner.uid
            and _comm(pid).startswith("qemu-storage")
        ):
            log.warning("stopping the storage daemon %d left from an earlier run", pid)
            await kill(Spawned(pid), STOP_GRACE)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


async def kill(process: Spawned, grace: float = 0.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, and wait until it is gone."""
    try:
        pidfd = process.pidfd()
    except ProcessLookupError:
        process.reap()
        return
    try:
        exited = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(pidfd, exited.set)
        try:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
                if wait <= 0 and sig is signal.SIGTERM:
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await exited.wait()
                if exited.is_set():
                    break
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)
    process.reap()


def _is_ours(pid: int, paths: RunPaths) -> bool:
    """Whether ``pid`` is a storage daemon this VM's run directory started: the marker
    every process the daemon spawns carries in its environment, from exec on."""
    marker = f"{RUN_DIR_VAR}={paths.root}".encode()
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def _no_events(event: GuestEvent, detail: str) -> None:
    """A storage daemon has no guest; its QMP events are not the VM's."""
