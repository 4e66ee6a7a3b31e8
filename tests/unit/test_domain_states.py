"""The domain's state machine: a transition table, enums for events and reasons (whose
strings the store keeps and the API sends, unchanged), events recorded once, the last
reason kept across a daemon restart, and every background task owned and awaited."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import Daemon
from qumran.daemon.domain import TRANSITIONS, Event, IllegalTransition, Reason, State, next_state
from qumran.daemon.manager import RESET_BURST_SECONDS, Caller, Manager
from qumran.daemon.store import Store
from qumran.drivers.base import GuestEvent
from qumran.drivers.fake import FakeDriver
from qumran.errors import InvalidState, NotFound

DOC = {"memory": 64, "boot": {"kernel": "/bin/sh"}}
ME = Caller(os.getuid(), os.getgid())


# the table ------------------------------------------------------------------------------


def test_the_strings_on_the_wire_are_todays() -> None:
    assert {e.value for e in Event} == {
        "defined", "undefined", "started", "reattached", "suspended", "resumed", "shutdown",
        "reboot-requested", "rebooted", "reset", "crashed", "stopped",
    }  # fmt: skip
    assert {s.value for s in State} == {"shutoff", "running", "paused", "shutdown", "crashed"}
    reasons = ["booted", "autostart", "user", "guest", "signal", "destroyed", "shutdown",
               "killed", "crashed", "gone", "daemon-restart", "defined", "undefined"]  # fmt: skip
    for reason in reasons:
        assert Reason(reason).value == reason
    assert Reason.parse("from-a-newer-qumrand") is Reason.UNKNOWN


def test_every_process_state_can_stop_and_nothing_else_reaches_shutoff() -> None:
    for state in State:
        assert next_state(state, Event.STOPPED) is State.SHUTOFF
    into_shutoff = {(s, e) for (s, e), targets in TRANSITIONS.items() if State.SHUTOFF in targets}
    assert {e for _, e in into_shutoff} == {Event.STOPPED, Event.DEFINED, Event.UNDEFINED}
    assert all(s is State.SHUTOFF for s, e in into_shutoff if e is not Event.STOPPED)


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (State.SHUTOFF, Event.RESUMED),
        (State.SHUTOFF, Event.SUSPENDED),
        (State.SHUTOFF, Event.RESET),
        (State.RUNNING, Event.STARTED),
        (State.RUNNING, Event.RESUMED),
        (State.RUNNING, Event.UNDEFINED),
        (State.PAUSED, Event.STARTED),
        (State.CRASHED, Event.REBOOT_REQUESTED),
    ],
)
def test_illegal_transitions_are_refused(state: State, event: Event) -> None:
    with pytest.raises(IllegalTransition, match=f"{event.value} is not allowed in state"):
        next_state(state, event)


def test_a_choice_of_states_must_be_named() -> None:
    assert next_state(State.SHUTOFF, Event.REATTACHED, State.PAUSED) is State.PAUSED
    with pytest.raises(IllegalTransition):
        next_state(State.SHUTOFF, Event.REATTACHED)
    with pytest.raises(IllegalTransition):
        next_state(State.SHUTOFF, Event.REATTACHED, State.CRASHED)


# the manager in process, with real fakevm processes --------------------------------------


def in_manager(tmp_path: Path, body: Any) -> None:
    run_dir = Path(os.path.realpath("/tmp")) / f"qst-{os.getpid()}-{time.monotonic_ns()}"

    async def main() -> None:
        store = Store(tmp_path / "state" / "qumran.db")
        manager = Manager(store, {"qemu": FakeDriver()}, run_dir)
        try:
            await body(manager)
        finally:
            for dom in list(manager.domains.values()):
                if dom.run is not None:
                    os.kill(dom.run.process.pid, signal.SIGKILL)
                    await dom.exited.wait()
            await manager.close()
            store.close()

    try:
        asyncio.run(main())
    finally:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)


def stored(manager: Manager, name: str) -> list[tuple[str, str, str]]:
    return [(e.event, e.state, e.reason) for e in manager.store.events() if e.vm == name]


def test_an_illegal_transition_is_logged_as_a_bug_and_not_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(manager: Manager) -> None:
        dom = await manager.define(ME, {"name": "ill", **DOC})
        with caplog.at_level(logging.ERROR):
            manager._changed(dom, Event.RESUMED, Reason.USER, "out of the blue")
        assert (dom.state, dom.reason) == (State.SHUTOFF, Reason.DEFINED)
        assert stored(manager, "ill") == [("defined", "shutoff", "defined")]
        assert "bug: VM ill: event resumed is not allowed in state shutoff" in caplog.text

    in_manager(tmp_path, body)


def test_a_crashed_guest_whose_process_stays_can_be_destroyed(tmp_path: Path) -> None:
    async def body(manager: Manager) -> None:
        dom = await manager.start(ME, (await manager.define(ME, {"name": "cr", **DOC})).name)
        manager._guest_events(dom)(GuestEvent.CRASH, "KVM internal error")  # as QEMU says it
        assert (dom.state, dom.reason, dom.active) == (State.CRASHED, Reason.CRASHED, True)
        with pytest.raises(InvalidState, match="already crashed"):
            await manager.start(ME, "cr")
        with pytest.raises(InvalidState, match="is crashed; it cannot be rebooted"):
            await manager.reboot(ME, "cr")
        await manager.destroy(ME, "cr")
        assert (dom.state, dom.reason, dom.run) == (State.SHUTOFF, Reason.DESTROYED, None)

    in_manager(tmp_path, body)


def test_a_burst_of_guest_resets_is_one_reboot(tmp_path: Path) -> None:
    async def body(manager: Manager) -> None:
        dom = await manager.start(ME, (await manager.define(ME, {"name": "rs", **DOC})).name)
        sink = manager._guest_events(dom)
        for _ in range(4):  # firmware and guest each pulling the reset line, one reboot
            sink(GuestEvent.RESET, "guest-reset")
        assert [e for e, _, _ in stored(manager, "rs")].count("reset") == 1
        assert dom.run is not None
        dom.run.last_reset = time.monotonic() - RESET_BURST_SECONDS  # as if a while later
        sink(GuestEvent.RESET, "guest-reset")
        await manager.reset(ME, "rs")  # the user's reset, and the firmware's own after it
        sink(GuestEvent.RESET, "guest-reset")
        assert stored(manager, "rs")[1:] == [
            ("started", "running", "booted"),
            ("reset", "running", "guest"),
            ("reset", "running", "guest"),
            ("rebooted", "running", "user"),
        ]

    in_manager(tmp_path, body)


def test_close_waits_for_background_tasks_and_their_failures_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(manager: Manager) -> None:
        dom = await manager.start(ME, (await manager.define(ME, {"name": "bg", **DOC})).name)
        assert dom.run is not None
        released = asyncio.Event()

        async def failing_close() -> None:
            await asyncio.sleep(0.05)
            released.set()
            raise RuntimeError("the console would not close")

        dom.run.console.close = failing_close  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR):
            await manager.destroy(ME, "bg")
            assert not released.is_set()  # still in flight: close() must wait for it
            await manager.close()
        assert released.is_set() and manager._tasks == set()
        assert "release bg failed: the console would not close" in caplog.text

    in_manager(tmp_path, body)


def test_an_operation_queued_behind_undefine_finds_the_vm_gone(tmp_path: Path) -> None:
    async def body(manager: Manager) -> None:
        await manager.define(ME, {"name": "q", **DOC})
        dom = manager.domains["q"]
        async with dom.lock:  # hold the VM while both requests queue up, in this order
            undefine = asyncio.create_task(manager.undefine(ME, "q"))
            start = asyncio.create_task(manager.start(ME, "q"))
            await asyncio.sleep(0)
        await undefine
        with pytest.raises(NotFound, match=r"no VM named 'q' \(it was undefined meanwhile\)"):
            await start
        assert dom.run is None and manager.store.runtimes() == {}
        assert stored(manager, "q")[-1] == ("undefined", "shutoff", "undefined")

    in_manager(tmp_path, body)


# against a real qumrand -------------------------------------------------------------------


def define(daemon: Daemon, name: str) -> None:
    response = daemon.call("POST", "/v1/vms", json={"name": name, **DOC})
    assert response.status_code == 201, response.text


def act(daemon: Daemon, name: str, verb: str) -> dict[str, Any]:
    response = daemon.call("POST", f"/v1/vms/{name}/{verb}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_a_restart_keeps_each_vms_last_reason(fake_daemon: Daemon) -> None:
    for name in ("killed", "destroyed", "fresh"):
        define(fake_daemon, name)
    pid = act(fake_daemon, "killed", "start")["pid"]
    os.kill(pid, signal.SIGKILL)
    assert fake_daemon.wait_state("killed", "shutoff")["reason"] == "killed"
    act(fake_daemon, "destroyed", "start")
    act(fake_daemon, "destroyed", "destroy")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        fake_daemon.restart(sig)
        reasons = {vm["name"]: (vm["state"], vm["reason"])
                   for vm in fake_daemon.call("GET", "/v1/vms?all=true").json()}  # fmt: skip
        assert reasons == {
            "killed": ("shutoff", "killed"),
            "destroyed": ("shutoff", "destroyed"),
            "fresh": ("shutoff", "defined"),
        }
    assert "bug:" not in fake_daemon.log.read_text()


def test_a_guest_reboot_typed_in_the_console_is_one_event(fake_daemon: Daemon) -> None:
    from websockets.sync.client import unix_connect

    define(fake_daemon, "rb")
    act(fake_daemon, "rb", "start")
    with unix_connect(fake_daemon.socket, uri="ws://localhost/v1/vms/rb/console") as ws:
        ws.send(b"reboot\nreboot\nreboot\n")  # one guest trying three ways in a row
        seen = b""
        while seen.count(b"FAKE-VM READY") < 4:  # the first boot's, then three more
            seen += ws.recv(timeout=10)  # type: ignore[operator]
    # The monitor is one ordered stream: once suspend's reply is in, so are the resets.
    act(fake_daemon, "rb", "suspend")
    events = [e for e in fake_daemon.call("GET", "/v1/events").json() if e["vm"] == "rb"]
    assert [(e["event"], e["reason"], e["detail"]) for e in events] == [
        ("defined", "defined", ""),
        ("started", "booted", f"pid {events[1]['detail'].split()[-1]}"),
        ("reset", "guest", "guest-reset"),
        ("suspended", "user", ""),
    ]
    assert "bug:" not in fake_daemon.log.read_text()
