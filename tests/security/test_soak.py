"""The kill -9 soak: qumrand killed at random points while VMs are defined, started,
destroyed and undefined, then started again, round after round.

After each restart:
- every definition the API confirmed (a 2xx answer to define, and no confirmed undefine
  after it) is there, and none the API confirmed gone has come back;
- every VM process is either tracked by the daemon (its pid in the VM list) or gone.

VM processes are found as descendants of this test, which is their subreaper while the soak
runs (a process a killed daemon left behind is re-parented to us), so the check does not
depend on how the driver names its processes. The figures go to RELIABILITY.md; set
QUMRAN_SOAK_ROUNDS to run more or fewer rounds (CI: the default).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import pytest

from daemon_harness import Daemon, child_subreaper, descendants

ROUNDS = int(os.environ.get("QUMRAN_SOAK_ROUNDS", "100"))
WORKERS = 3  # each works on its own VMs, one request at a time
VMS_PER_WORKER = 2
KILL_AFTER = (0.0, 0.4)  # seconds after a round's first request (uniform)
EXIT_GRACE = 1.0  # a VM process told to stop just before the kill may take this long
SEED = int(os.environ.get("QUMRAN_SOAK_SEED", str(int(time.time()))))
FIGURES = Path(__file__).resolve().parents[2] / "artifacts" / "soak.json"


@dataclass
class Figures:
    seed: int
    rounds: int = 0
    requests: int = 0
    confirmed: int = 0  # answered 2xx
    refused: int = 0  # answered 4xx (e.g. a state that changed under a kill)
    server_errors: list[str] = field(default_factory=list)  # answered 5xx
    interrupted: int = 0  # no answer: the daemon died with it in flight
    lost_definitions: list[str] = field(default_factory=list)
    resurrected_definitions: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # VM processes nobody tracks


class Ledger:
    """What the API confirmed about each VM: defined (True), gone (False), unknown (None:
    a request on it was in flight when the daemon died)."""

    def __init__(self, names: list[str]) -> None:
        self.defined: dict[str, bool | None] = dict.fromkeys(names, False)
        self.running: dict[str, bool] = dict.fromkeys(names, False)
        self.lock = threading.Lock()


def definition(name: str) -> dict[str, object]:
    return {"name": name, "memory": 64, "boot": {"kernel": "/bin/sh"}}


def next_request(ledger: Ledger, name: str, rng: random.Random) -> tuple[str, str, object]:
    """A request that makes sense for what we know of ``name``."""
    if not ledger.defined[name]:
        return "define", "/v1/vms", definition(name)
    if ledger.running[name]:
        return "destroy", f"/v1/vms/{name}/destroy", None
    verb = rng.choice(["start", "start", "undefine"])
    if verb == "undefine":
        return verb, f"/v1/vms/{name}", None
    return verb, f"/v1/vms/{name}/start", None


def worker(daemon: Daemon, ledger: Ledger, names: list[str], figures: Figures, seed: int) -> None:
    """Send requests on ``names`` until the daemon dies under one of them."""
    rng = random.Random(seed)
    transport = httpx.HTTPTransport(uds=daemon.socket)
    with httpx.Client(transport=transport, base_url="http://qumrand", timeout=30) as client:
        while True:
            name = rng.choice(names)
            verb, path, body = next_request(ledger, name, rng)
            method = {"define": "POST", "undefine": "DELETE"}.get(verb, "POST")
            try:
                response = client.request(method, path, json=body)
            except httpx.TransportError:
                with ledger.lock:
                    figures.requests += 1
                    figures.interrupted += 1
                    if verb in ("define", "undefine"):
                        ledger.defined[name] = None
                return
            with ledger.lock:
                figures.requests += 1
                if response.is_success:
                    figures.confirmed += 1
                    if verb in ("define", "undefine"):
                        ledger.defined[name] = verb == "define"
                    ledger.running[name] = verb == "start"
                elif response.status_code >= 500:
                    figures.server_errors.append(f"{verb} {name}: {response.text[:200]}")
                else:
                    figures.refused += 1
            if not response.is_success and not learn(client, ledger, name):
                return


def learn(client: httpx.Client, ledger: Ledger, name: str) -> bool:
    """Ask what became of ``name`` after a refusal; False if the daemon has died."""
    try:
        response = client.get(f"/v1/vms/{name}")
    except httpx.TransportError:
        return False
    with ledger.lock:
        ledger.defined[name] = response.status_code != 404
        ledger.running[name] = response.is_success and response.json()["pid"] is not None
    return True


def vm_processes(daemon: Daemon) -> set[int]:
    """Every process below this test except qumrand itself: the VM processes."""
    assert daemon.proc is not None
    return descendants(os.getpid()) - {daemon.proc.pid}


def wait_gone(pid: int, timeout: float) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def reap_zombies(daemon: Daemon) -> None:
    """Collect VM processes re-parented to us that have ended (we are their subreaper)."""
    for pid in vm_processes(daemon):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def check_after_restart(daemon: Daemon, ledger: Ledger, figures: Figures, round_: int) -> None:
    response = daemon.call("GET", "/v1/vms", params={"all": "true"})
    response.raise_for_status()
    listed = {vm["name"]: vm for vm in response.json()}
    for name, defined in ledger.defined.items():
        if defined is True and name not in listed:
            figures.lost_definitions.append(f"round {round_}: {name}")
        if defined is False and name in listed:
            figures.resurrected_definitions.append(f"round {round_}: {name}")
        ledger.defined[name] = name in listed  # what we know from here on
        ledger.running[name] = name in listed and listed[name]["pid"] is not None
    tracked = {vm["pid"] for vm in listed.values() if vm["pid"] is not None}
    deadline = time.monotonic() + EXIT_GRACE  # one grace for all of them
    for pid in vm_processes(daemon) - tracked:
        if not wait_gone(pid, max(0.0, deadline - time.monotonic())):
            figures.orphans.append(f"round {round_}: pid {pid} ({cmdline(pid)})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 10)
    reap_zombies(daemon)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    except OSError:
        return "?"


@pytest.fixture
def soak_daemon(daemon_root: Path) -> Iterator[Daemon]:
    daemon = Daemon(daemon_root, driver="fake")
    with child_subreaper():
        daemon.start()
        try:
            yield daemon
        finally:
            leftovers = vm_processes(daemon) if daemon.proc is not None else set()
            daemon.cleanup()
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)


def test_kill_9_loses_no_definition_and_leaves_no_untracked_vm(soak_daemon: Daemon) -> None:
    daemon = soak_daemon
    rng = random.Random(SEED)
    names = [f"soak{i}" for i in range(WORKERS * VMS_PER_WORKER)]
    ledger = Ledger(names)
    figures = Figures(seed=SEED)
    began = time.monotonic()
    for round_ in range(ROUNDS):
        threads = [
            threading.Thread(
                target=worker,
                args=(daemon, ledger, names[w::WORKERS], figures, rng.randrange(1 << 30)),
                name=f"soak-worker-{w}",
            )
            for w in range(WORKERS)
        ]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(*KILL_AFTER))  # the random point of the kill is the test
        daemon.stop(signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a request hung after the daemon was killed"
        daemon.start()
        check_after_restart(daemon, ledger, figures, round_)
        figures.rounds += 1

    summary = {**asdict(figures), "seconds": round(time.monotonic() - began, 1)}
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v if not isinstance(v, list) else len(v) for k, v in summary.items()}))
    context = f"seed {SEED}; figures in {FIGURES}"
    assert figures.lost_definitions == [], context
    assert figures.resurrected_definitions == [], context
    assert figures.orphans == [], context
    assert figures.server_errors == [], context
