"""Per-VM statistics, sampled from the VM process and its monitor.

Every ``INTERVAL`` seconds, for each running VM: CPU use (from /proc/PID/stat, as a
percentage of one host CPU), resident memory, and disk bytes (from the hypervisor's own
counters when it has them). Network counters are null for QEMU user-mode networking,
which exposes none. The last ``KEEP_SECONDS`` are kept in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from qumran.daemon.domain import Domain, State
from qumran.drivers.process import proc_cpu_seconds, proc_rss_bytes

log = logging.getLogger(__name__)

INTERVAL = 2.0
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


class StatsSampler:
    def __init__(self, domains: dict[str, Domain], interval: float = INTERVAL) -> None:
        self._domains = domains
        self.interval = interval
        self._history: dict[str, deque[Sample]] = {}
        self._last_cpu: dict[str, tuple[int, float, float]] = {}  # uuid -> (pid, wall, cpu)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stats sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def samples(self, dom: Domain) -> list[dict[str, Any]]:
        return [asdict(s) for s in self._history.get(dom.uuid, ())]

    async def _run(self) -> None:
        while True:
            for dom in list(self._domains.values()):
                if dom.run is not None and dom.state in (State.RUNNING, State.SHUTDOWN):
                    await self.sample(dom)
            await asyncio.sleep(self.interval)

    async def sample(self, dom: Domain) -> None:
        run = dom.run
        if run is None:
            return
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
        history = self._history.setdefault(
            dom.uuid, deque(maxlen=int(KEEP_SECONDS / self.interval))
        )
        history.append(
            Sample(now, round(percent, 2), proc_rss_bytes(pid),
                   io[0] if io else None, io[1] if io else None)
        )  # fmt: skip
