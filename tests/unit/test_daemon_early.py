"""A starting qumrand's early answers (daemon/early.py): ``GET /v1/vms`` from the store and
/proc before the full API has loaded, the same documents the full daemon then shows, and
every other request handed whole to the full server.

The VMs are the fake driver's real stand-in processes, left running by one Manager and
re-attached by the next, as across a daemon restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from qumran.daemon.early import EarlyServer, Listing, ListRequest, list_request
from qumran.daemon.manager import Caller, Manager
from qumran.daemon.store import Store
from qumran.drivers.fake import FakeDriver
from qumran.drivers.process import ProcState, proc_state

DOC = {"memory": 64, "boot": {"kernel": "/bin/sh"}}
ME = Caller(os.getuid(), os.getgid())
VOLATILE = ("cpu_time", "rss_bytes", "uptime")


def _steady(docs: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in doc.items() if k not in VOLATILE} for doc in docs]


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def test_the_early_list_is_what_the_full_daemon_shows_after_reattaching(tmp_path: Path) -> None:
    run_dir = Path(os.path.realpath("/tmp")) / f"qea-{os.getpid()}-{time.monotonic_ns()}"
    store_path = tmp_path / "state" / "qumran.db"
    pids: list[int] = []

    async def main() -> None:
        first = Manager(Store(store_path), {"qemu": FakeDriver()}, run_dir)
        for i in range(6):
            await first.define(ME, {"name": f"v{i}", **DOC})
        for i in range(4):
            dom = await first.start(ME, f"v{i}")
            assert dom.run is not None
            pids.append(dom.run.process.pid)
        await first.suspend(ME, "v1")  # paused by its user
        os.kill(pids[2], signal.SIGSTOP)  # stopped from outside
        await _until(lambda: first.domains["v2"].state.value == "paused")
        await first.close()  # the VMs outlive their daemon
        first.store.close()
        os.kill(pids[3], signal.SIGKILL)  # dies while no daemon watches
        await _until(lambda: proc_state(pids[3]) is ProcState.GONE)

        store = Store(store_path)
        listing = Listing(store, os.geteuid())
        early = {flag: listing.documents(ME.uid, flag) for flag in (False, True)}
        stranger = listing.documents(ME.uid + 4242, True)
        second = Manager(store, {"qemu": FakeDriver()}, run_dir)
        try:
            await second.restore()
            await _until(lambda: second.domains["v2"].state.value == "paused")  # first look
            full = {
                flag: [d.info() for d in second.visible(ME) if flag or d.active]
                for flag in (False, True)
            }
            states = {d["name"]: (d["state"], d["reason"]) for d in early[True]}
            assert states == {
                "v0": ("running", "daemon-restart"),
                "v1": ("paused", "daemon-restart"),
                "v2": ("paused", "signal"),
                "v3": ("shutoff", "gone"),
                "v4": ("shutoff", "defined"),
                "v5": ("shutoff", "defined"),
            }
            for flag in (False, True):
                assert _steady(early[flag]) == _steady(full[flag])
            assert [d["name"] for d in early[False]] == ["v0", "v1", "v2"]
            if ME.uid != 0:  # another user sees none of them (root sees all)
                assert stranger == []
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            for dom in second.domains.values():
                await dom.exited.wait()
            await second.close()
            store.close()

    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET /v1/vms HTTP/1.1\r\nHost: localhost\r\nConnection: close", ListRequest(False, True)),
        (b"GET /v1/vms?all=true HTTP/1.1\r\nHost: localhost", ListRequest(True, False)),
        (b"GET /v1/vms?all=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 0", ListRequest(False, False)),
        (b"GET /v1/vms?all=YES HTTP/1.1\r\nconnection: keep-alive, Close", ListRequest(True, True)),
        (b"GET /v1/vms?all=maybe HTTP/1.1\r\nHost: x", None),  # the full API's 400
        (b"GET /v1/vms?all=1&all=0 HTTP/1.1\r\nHost: x", None),
        (b"GET /v1/vms?other=1 HTTP/1.1\r\nHost: x", None),
        (b"GET /v1/vms/a HTTP/1.1\r\nHost: x", None),
        (b"POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Length: 2", None),
        (b"GET /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Length: 5", None),
        (b"GET /v1/vms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked", None),
        (b"GET /v1/vms HTTP/1.1\r\nHost: x\r\nUpgrade: websocket", None),
        (b"GET /v1/vms HTTP/1.0\r\nHost: x", None),
        (b"GET /v1/vms HTTP/1.1\r\n Host: x", None),
        (b"GET /v1/vms HTTP/1.1\r\nHost: \xff", None),
    ],
)
def test_only_a_plain_list_request_is_answered_early(
    head: bytes, expected: ListRequest | None
) -> None:
    assert list_request(head) == expected


class _Adopted:
    """What the full server would get: each connection and the bytes read from it."""

    def __init__(self) -> None:
        self.got: list[tuple[socket.socket, bytes]] = []

    def __call__(self, conn: socket.socket, data: bytes) -> None:
        self.got.append((conn, data))


def test_the_early_server_answers_lists_and_hands_everything_else_over(tmp_path: Path) -> None:
    store = Store(tmp_path / "qumran.db")
    path = str(tmp_path / "api.sock")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(path)
    listening.listen(16)

    def request(data: bytes) -> socket.socket:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        client.sendall(data)
        return client

    def answer(client: socket.socket) -> bytes:
        got = b""
        while chunk := client.recv(65536):
            got += chunk
        return got

    async def main() -> None:
        early = EarlyServer(listening, Listing(store, os.geteuid()))
        early.start()
        loop = asyncio.get_running_loop()
        plain = request(b"GET /v1/vms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        listed = await loop.run_in_executor(None, answer, plain)
        head, _, body = listed.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
        assert b"connection: close" in head and json.loads(body) == []
        assert early.answered == 1
        # Kept open (HTTP/1.1's default): answered, and the next request read in turn.
        kept = request(b"GET /v1/vms?all=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await loop.run_in_executor(None, kept.recv, 65536)
        assert first.startswith(b"HTTP/1.1 200 OK") and b"connection" not in first
        assert json.loads(first.partition(b"\r\n\r\n")[2]) == []
        after = b"DELETE /v1/vms/a HTTP/1.1\r\nHost: x\r\n\r\n"
        kept.sendall(after)

        define = b"POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        odd = b"GET /v1/vms?all=maybe HTTP/1.1\r\nHost: x\r\n\r\n"
        half = b"GET /v1/daemon HTTP/1.1\r\nHo"
        pipelined = b"GET /v1/vms HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/host HTTP/1.1\r\n\r\n"
        clients = [request(data) for data in (define, odd, half, pipelined)]
        silent = request(b"")
        await asyncio.sleep(0.2)  # all read; none answered
        assert early.answered == 2
        adopted = _Adopted()
        early.hand_over(adopted)
        got = {data: conn for conn, data in adopted.got}
        assert set(got) == {define, odd, half, pipelined, b"", after}
        # Each connection is still open and the full server's to answer.
        for conn in got.values():
            conn.setblocking(True)
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
            conn.close()
        for client in [*clients, silent, kept]:
            assert (await loop.run_in_executor(None, answer, client)).startswith(b"HTTP/1.1 204")
            client.close()
        # The listening socket itself stays open: a new client waits for the full server.
        late = request(b"GET /v1/vms HTTP/1.1\r\nHost: x\r\n\r\n")
        served, _ = await loop.sock_accept(listening)
        assert served.recv(100).startswith(b"GET /v1/vms")
        served.close()
        late.close()

    try:
        listening.setblocking(False)
        asyncio.run(main())
    finally:
        listening.close()
        store.close()
