"""Per-VM statistics, sampled from the VM process and its monitor.

For each running VM: CPU use (from /proc/PID/stat, as a percentage of one host CPU since
the sample before), resident memory, and disk bytes (from the hypervisor's own counters
when it has them). Network counters are those of the TAPs of the VM's network NICs
(daemon/nics.py: the kernel's own, turned round to the guest's side), summed and per NIC;
null without a network NIC (QEMU's user-mode stack exposes none). The last
``KEEP_SECONDS`` are kept in memory.

A sample costs a monitor round trip, so VMs are sampled every ``INTERVAL`` seconds only
while someone watches them (a look at their statistics, through the API or the web
manager, keeps them watched for ``WATCH_SECONDS``), and otherwise every
``IDLE_INTERVAL`` seconds: an idle daemon with many VMs stays idle. One task samples
every VM, waking only when the next sample is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from qumran.client.schema import NicSample
from qumran.daemon import nics
from qumran.daemon.domain import Domain, State
from qumran.drivers.process import proc_cpu_seconds, proc_rss_bytes

log = logging.getLogger(__name__)

INTERVAL = 2.0  # seconds between samples of a watched VM
IDLE_INTERVAL = 60.0  # seconds between samples of a VM nobody looks at
WATCH_SECONDS = 30.0  # how long one look at a VM's statistics keeps it watched
KEEP_SECONDS = 600
MONITOR_TIMEOUT = 1.0


@dataclass(frozen=True)
class Sample:
    t: float
    cpu_percent: float
    rss_bytes: int
    disk_read_bytes: int | None
    disk_write_bytes: int | None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None
    net_interfaces: list[NicSample] = field(default_factory=list)


class StatsSampler:
    def __init__(
        self,
        domains: dict[str, Domain],
        interval: float = INTERVAL,
        idle_interval: float = IDLE_INTERVAL,
        watch_seconds: float = WATCH_SECONDS,
    ) -> None:
        self._domains = domains
        self.interval = interval
        self.idle_interval = idle_interval
        self.watch_seconds = watch_seconds
        self._history: dict[str, deque[Sample]] = {}
        self._last_cpu: dict[str, tuple[int, float, float]] = {}  # uuid -> (pid, wall, cpu)
        self._due: dict[str, float] = {}  # uuid -> monotonic time its next sample is due
        self._watched_until: dict[str, float] = {}  # uuid -> monotonic time
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.taken = 0  # samples taken so far (for tests: none while nobody watches)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stats sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def started(self, dom: Domain) -> None:
        """``dom``'s process is new: a first sample soon (the base for CPU use)."""
        self._due[dom.uuid] = time.monotonic()
        self._wake.set()

    def watched(self, dom: Domain) -> bool:
        return self._watched_until.get(dom.uuid, 0.0) > time.monotonic()

    def samples(self, dom: Domain) -> list[dict[str, Any]]:
        """The samples kept for ``dom``, oldest first; someone is watching it now."""
        self._watch(dom)
        return [asdict(s) for s in self._history.get(dom.uuid, ())]

    async def fresh_samples(self, dom: Domain) -> list[dict[str, Any]]:
        """As :meth:`samples`, with one taken now if the newest is older than the interval
        (the VM was not watched until now)."""
        history = self._history.get(dom.uuid)
        if self._running(dom) and (not history or time.time() - history[-1].t >= self.interval):
            self._watched_until[dom.uuid] = time.monotonic() + self.watch_seconds
            await self.sample(dom)  # due again an interval from now: the loop must know
            self._wake.set()
        return self.samples(dom)

    def _watch(self, dom: Domain) -> None:
        now = time.monotonic()
        was_watched = self._watched_until.get(dom.uuid, 0.0) > now
        self._watched_until[dom.uuid] = now + self.watch_seconds
        if not was_watched and self._running(dom):
            self._due[dom.uuid] = now  # from the slow pace to the fast one, starting now
            self._wake.set()

    @staticmethod
    def _running(dom: Domain) -> bool:
        return dom.run is not None and dom.state in (State.RUNNING, State.SHUTDOWN)

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            next_due = now + self.idle_interval
            due: list[Domain] = []
            live: set[str] = set()
            for dom in list(self._domains.values()):
                if not self._running(dom):
                    continue
                live.add(dom.uuid)
                at = self._due.setdefault(dom.uuid, now)
                if at <= now:
                    due.append(dom)
                else:
                    next_due = min(next_due, at)
            for uuid in [u for u in self._due if u not in live]:  # stopped or undefined
                del self._due[uuid]
                self._watched_until.pop(uuid, None)
            for dom in due:
                await self.sample(dom)
            if due:
                continue  # the next due times have moved: look again
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(next_due - now):
                    await self._wake.wait()

    async def sample(self, dom: Domain) -> None:
        run = dom.run
        if run is None:
            return
        watched = self.watched(dom)
        self._due[dom.uuid] = time.monotonic() + (self.interval if watched else self.idle_interval)
        self.taken += 1
        pid, now = run.process.pid, time.time()
        cpu = proc_cpu_seconds(pid)
        last = self._last_cpu.get(dom.uuid)
        percent = 0.0
        if last is not None and last[0] == pid and now > last[1]:
            percent = max(0.0, (cpu - last[2]) / (now - last[1]) * 100)
        self._last_cpu[dom.uuid] = (pid, now, cpu)
        io: tuple[int, int] | None = None
        try:
            async with asyncio.timeout(MONITOR_TIMEOUT):
                io = await run.instance.block_io()
        except Exception as exc:  # a slow or dying monitor costs one sample, not the loop
            log.debug("vm %s: no block stats: %s", dom.name, exc)
        net = nic_samples(dom)
        history = self._history.setdefault(dom.uuid, deque())
        history.append(
            Sample(now, round(percent, 2), proc_rss_bytes(pid),
                   io[0] if io else None, io[1] if io else None,
                   sum(n["rx_bytes"] for n in net) if net else None,
                   sum(n["tx_bytes"] for n in net) if net else None, net)
        )  # fmt: skip
        while history and history[0].t < now - KEEP_SECONDS:
            history.popleft()


def nic_samples(dom: Domain) -> list[NicSample]:
    """The counters of each network NIC's TAP (a read of sysfs each, no monitor call)."""
    found: list[NicSample] = []
    for index, nic in nics.network_nics(dom.spec):
        tap = nics.tap_name(dom.uuid, index)
        counted = nics.counters(tap)
        if counted is not None and nic.network is not None and nic.mac is not None:
            found.append({"interface": tap, "mac": nic.mac, "network": nic.network, **counted})
    return found
