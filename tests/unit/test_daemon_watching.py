"""What an idle qumrand does for its running VMs: nothing for its own children (SIGCHLD
tells it of their stops and continues), one timer for VMs that are not its children
(SIGSTOP and SIGCONT still seen within a second, for many VMs at once), and statistics
sampled at the watched pace only while someone looks at them.

The manager runs in process here with the fake driver's real stand-in processes, so the
signals are real; the sampler's pace is shortened so the test takes a second, not minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from test_domain_states import in_manager

from daemon_harness import Daemon
from qumran.config.spec import VmSpec
from qumran.daemon.console import ConsoleBroker
from qumran.daemon.domain import Domain, Event, Running, State
from qumran.daemon.manager import Caller, Manager
from qumran.daemon.store import Store, VmRecord
from qumran.daemon.supervisor import POLL_SECONDS, SECOND_LOOK, Supervisor
from qumran.drivers.base import Instance, RunPaths
from qumran.drivers.fake import FakeDriver
from qumran.drivers.process import Spawned

DOC = {"memory": 64, "boot": {"kernel": "/bin/sh"}}
ME = Caller(os.getuid(), os.getgid())
MANY = 12


async def until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def start_many(manager: Manager, count: int) -> list[Domain]:
    doms = [await manager.define(ME, {"name": f"w{i}", **DOC}) for i in range(count)]
    await asyncio.gather(*(manager.start(ME, d.name) for d in doms))
    return doms


def test_sigchld_shows_sigstop_and_sigcont_of_many_vms_with_no_timer(tmp_path: Path) -> None:
    async def body(manager: Manager) -> None:
        doms = await start_many(manager, MANY)
        assert manager.supervisor.watching == MANY
        assert manager.supervisor.polled == 0  # our children: the kernel tells us
        pids = [d.run.process.pid for d in doms if d.run is not None]

        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        assert await until(lambda: all(d.state is State.PAUSED for d in doms), 1.0), [
            (d.name, d.state) for d in doms
        ]
        assert {d.reason.value for d in doms} == {"signal"}
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        assert await until(lambda: all(d.state is State.RUNNING for d in doms), 1.0)
        assert {d.reason.value for d in doms} == {"signal"}
        assert manager.supervisor.ticks == 0 and manager.supervisor._timer is None

        await asyncio.sleep(SECOND_LOOK * 2)  # the second look after the last SIGCHLD
        looks = manager.supervisor.looks
        await asyncio.sleep(POLL_SECONDS * 3)  # idle: nothing wakes to look
        assert manager.supervisor.looks == looks

        os.kill(pids[0], signal.SIGKILL)  # exit is still seen at once, through the pidfd
        assert await until(lambda: doms[0].state is State.SHUTOFF, 1.0)
        assert doms[0].reason.value == "killed"
        assert manager.supervisor.watching == MANY - 1

    in_manager(tmp_path, body)


def _orphan() -> int:
    """A process that is not our child (its parent exited): as a VM whose qumrand was
    stopped and started again, and which no SIGCHLD of ours will describe."""
    out = subprocess.run(
        ["sh", "-c", "sleep 60 </dev/null >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout)


def _watched_orphans(count: int) -> list[tuple[Domain, Running]]:
    found = []
    for i in range(count):
        record = VmRecord(uuid=f"0000000{i}-0000-4000-8000-000000000000", name=f"o{i}",
                          owner=os.getuid(), owner_gid=os.getgid(), definition={},
                          autostart=False)  # fmt: skip
        dom = Domain(record, VmSpec.model_validate({"name": f"o{i}", **DOC}))
        dom.state = State.RUNNING
        process = Spawned(_orphan())
        found.append((dom, Running(cast(Instance, None), process, RunPaths(Path("/nonexistent")),
                                   ConsoleBroker(dom.name), started_at=time.time())))  # fmt: skip
    return found


def test_one_timer_sees_sigstop_and_sigcont_of_vms_that_are_not_our_children() -> None:
    async def main() -> None:
        events: list[tuple[str, Event, str]] = []
        sup = Supervisor(lambda dom, ev, reason, _: events.append((dom.name, ev, reason.value)))
        pairs = _watched_orphans(MANY)
        watches = [asyncio.create_task(sup.watch(dom, run)) for dom, run in pairs]
        try:
            assert await until(lambda: sup.watching == MANY, 1.0)
            assert sup.polled == MANY and sup._timer is not None
            pids = [run.process.pid for _, run in pairs]
            looks, ticks, began = sup.looks, sup.ticks, time.monotonic()
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            assert await until(lambda: len(events) == MANY, 1.0), events
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            assert await until(lambda: len(events) == 2 * MANY, 1.0), events
            assert {(e[1], e[2]) for e in events} == {
                (Event.SUSPENDED, "signal"), (Event.RESUMED, "signal")
            }
            # One timer for all: each firing looked at every VM once, and it fired about
            # once per interval, not once per VM per interval.
            fired, elapsed = sup.ticks - ticks, time.monotonic() - began
            assert fired >= 1
            assert sup.looks - looks == fired * MANY
            assert fired <= elapsed / sup.interval + 2

            os.kill(pids[0], signal.SIGKILL)  # exit is seen at once, through the pidfd
            assert await until(lambda: events[-1][:2] == ("o0", Event.STOPPED), 1.0)
            assert events[-1][2] == "killed" and sup.watching == MANY - 1
        finally:
            for _, run in pairs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(run.process.pid, signal.SIGKILL)
            await asyncio.gather(*watches)
            sup.close()
        assert sup.watching == 0

    asyncio.run(main())


def test_the_timer_stops_when_no_vm_runs() -> None:
    async def main() -> None:
        sup = Supervisor(lambda *_: None)
        [(dom, run)] = _watched_orphans(1)
        watch = asyncio.create_task(sup.watch(dom, run))
        assert await until(lambda: sup._timer is not None, 1.0)
        os.kill(run.process.pid, signal.SIGKILL)
        await watch
        looks = sup.looks
        await asyncio.sleep(sup.interval * 3)
        assert sup.looks == looks
        assert sup._timer is None
        sup.close()

    asyncio.run(main())


def _sampler_pace(manager: Manager, interval: float, idle: float, watch: float) -> None:
    manager.stats.interval = interval
    manager.stats.idle_interval = idle
    manager.stats.watch_seconds = watch
    manager.stats.start()


def test_stats_are_not_sampled_while_nobody_watches(tmp_path: Path) -> None:
    async def body(manager: Manager) -> None:
        _sampler_pace(manager, interval=0.05, idle=3600, watch=3600)
        doms = await start_many(manager, 3)
        # One sample each at start (the base for CPU use), then none at the idle pace.
        assert await until(lambda: manager.stats.taken == 3, 2.0)
        await asyncio.sleep(0.5)  # ten watched intervals
        assert manager.stats.taken == 3
        assert not any(manager.stats.watched(d) for d in doms)

        samples: list[dict[str, Any]] = manager.stats.samples(doms[0])  # someone looks
        assert len(samples) == 1
        assert await until(lambda: len(manager.stats.samples(doms[0])) >= 4, 2.0)
        assert manager.stats.watched(doms[0])
        assert manager.stats.taken - len(manager.stats.samples(doms[0])) == 2  # others idle

    in_manager(tmp_path, body)


def test_watching_ends_and_sampling_slows_down_again(tmp_path: Path) -> None:
    async def body(manager: Manager) -> None:
        _sampler_pace(manager, interval=0.05, idle=3600, watch=0.3)
        [dom] = await start_many(manager, 1)
        manager.stats.samples(dom)
        assert await until(lambda: manager.stats.taken >= 3, 2.0)
        assert await until(lambda: not manager.stats.watched(dom), 2.0)
        await asyncio.sleep(0.1)  # a sample under way when the watch ended may finish
        taken = manager.stats.taken
        await asyncio.sleep(0.5)
        assert manager.stats.taken == taken

    in_manager(tmp_path, body)


def test_the_stats_route_answers_with_a_sample_taken_now(fake_daemon: Daemon) -> None:
    response = fake_daemon.call("POST", "/v1/vms", json={"name": "fresh", **DOC})
    assert response.status_code == 201, response.text
    assert fake_daemon.call("POST", "/v1/vms/fresh/start").status_code == 200
    before = time.time()
    stats = fake_daemon.call("GET", "/v1/vms/fresh/stats").json()
    assert stats["samples"] and stats["samples"][-1]["t"] >= before - 0.01
    assert stats["samples"][-1]["rss_bytes"] > 0


class _GatedDriver(FakeDriver):
    """Re-attaches only once ``count`` re-attaches are under way at the same time."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.waiting = 0
        self.all_in = asyncio.Event()

    async def attach(self, spec: VmSpec, paths: RunPaths, pid: int, events: Any) -> Instance:
        self.waiting += 1
        if self.waiting == self.count:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), timeout=10)
        return await super().attach(spec, paths, pid, events)


def test_a_restarted_daemon_reattaches_its_vms_at_the_same_time(tmp_path: Path) -> None:
    run_dir = Path(os.path.realpath("/tmp")) / f"qra-{os.getpid()}-{time.monotonic_ns()}"
    store_path = tmp_path / "state" / "qumran.db"

    async def main() -> None:
        first = Manager(Store(store_path), {"qemu": FakeDriver()}, run_dir)
        doms = await start_many(first, 3)
        pids = [d.run.process.pid for d in doms if d.run is not None]
        await first.close()  # the VMs outlive their daemon
        first.store.close()
        gated = _GatedDriver(count=3)
        second = Manager(Store(store_path), {"qemu": gated}, run_dir)
        try:
            await second.restore()  # one after another, the first attach would time out
            assert gated.waiting == 3
            states = {d.name: (d.state, d.reason.value) for d in second.domains.values()}
            assert states == {d.name: (State.RUNNING, "daemon-restart") for d in doms}
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            for dom in second.domains.values():
                await dom.exited.wait()
            await second.close()
            second.store.close()

    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
