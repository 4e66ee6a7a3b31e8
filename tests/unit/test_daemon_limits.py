"""qumrand's listeners are bounded (docs/api.md, "Limits"), tested on a real qumrand.

The attack they stop: an ordinary user opened 1,100 idle connections, qumrand ran out of
file descriptors and `qumran list` hung for everyone. Here a second real user floods a
daemon whose caps are small, and root is still answered at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import unix_connect

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir, system_user

QUMRAN = str(Path(sys.executable).parent / "qumran")
CAP = 8
TIMEOUT = 1.0  # the header and idle timeouts of the daemon under test
CAPS = ("--max-conns-per-uid", str(CAP), "--max-web-conns-per-address", str(CAP))
TIMERS = ("--header-timeout", str(TIMEOUT), "--idle-timeout", str(int(TIMEOUT)))

# Run as the flooding user: open `n` connections, wait until the refused ones have been
# answered, report, and hold the rest open until stdin closes.
FLOOD = r"""
import json, select, socket, sys, time
path, n, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    conns.append(s)
refused, answer = set(), b""
poll = select.poll()  # not select(): more than 1024 descriptors
by_fd = {s.fileno(): s for s in conns}
for fd in by_fd:
    poll.register(fd, select.POLLIN)
deadline = time.monotonic() + 10
while len(refused) < n - cap and time.monotonic() < deadline:
    for fd, _ in poll.poll(max(0, deadline - time.monotonic()) * 1000):
        answer = by_fd[fd].recv(4096) or answer
        refused.add(fd)
        poll.unregister(fd)
print(json.dumps({"refused": len(refused), "open": n - len(refused), "answer": answer.decode()}),
      flush=True)
sys.stdin.read()
"""


def serve(*options: str) -> Iterator[Daemon]:
    root = short_tmpdir()
    d = Daemon(root, driver="fake", web=f"127.0.0.1:{free_port()}", options=options)
    d.start()
    yield d
    d.cleanup()
    remove_tmpdir(root)


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    """Small caps and short timeouts."""
    yield from serve(*CAPS, *TIMERS, "--max-body", "4096")


@pytest.fixture
def patient() -> Iterator[Daemon]:
    """Small caps, and timeouts long enough that held connections stay for the test."""
    yield from serve(*CAPS, "--header-timeout", "120", "--idle-timeout", "120")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def flooder() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("creates a user; needs root")
    return system_user("qumran-t1")


def qumran_list(daemon: Daemon, user: pwd.struct_passwd | None) -> subprocess.CompletedProcess[str]:
    env = {"QUMRAN_SOCKET": daemon.socket, "PATH": os.environ["PATH"], "HOME": "/tmp"}
    if "PYTHONPATH" in os.environ:  # the source under test, when it is not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    who = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return subprocess.run(
        [QUMRAN, "list", "--all"], capture_output=True, text=True, env=env, timeout=30, **who
    )  # type: ignore[call-overload, no-any-return]


def test_a_users_flood_is_refused_past_the_cap_and_root_is_answered(
    patient: Daemon, flooder: pwd.struct_passwd
) -> None:
    daemon = patient
    n = 1100  # as in the attack that exhausted the daemon's file descriptors
    flood = subprocess.Popen(
        [sys.executable, "-c", FLOOD, daemon.socket, str(n), str(CAP)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        user=flooder.pw_uid, group=flooder.pw_gid, extra_groups=[],
    )  # fmt: skip
    try:
        assert flood.stdout is not None and flood.stdin is not None
        report = json.loads(flood.stdout.readline())
        assert (report["refused"], report["open"]) == (n - CAP, CAP)
        assert report["answer"].startswith("HTTP/1.1 503")
        assert '"too-many-connections"' in report["answer"]
        assert f"uid {flooder.pw_uid}" in report["answer"]

        began = time.monotonic()
        listed = qumran_list(daemon, None)  # root: its own share, untouched by the flood
        assert listed.returncode == 0, listed.stderr
        assert time.monotonic() - began < 5

        refused = qumran_list(daemon, flooder)  # the flooder: a clear error, not a hang
        assert refused.returncode == 1
        assert "too many connections" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        # One line in the daemon's log for the whole burst, not one per refusal.
        assert daemon.log.read_text().count("refusing connections") == 1
    finally:
        flood.kill()
        flood.wait()
    # The flooder's slots are given back when its connections go.
    deadline = time.monotonic() + 10
    while (again := qumran_list(daemon, flooder)).returncode != 0:
        assert time.monotonic() < deadline, again.stderr
    assert again.stdout.startswith(" Id")


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """All the daemon sends until it closes the connection, and when it closed."""
    sock.settimeout(10 * TIMEOUT)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data, time.monotonic()


def test_a_half_sent_request_head_is_closed_after_the_header_timeout(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket)
        began = time.monotonic()
        s.sendall(b"GET /v1/vms HTTP/1.1\r\nHost: q\r\n")  # and never the blank line
        data, closed = read_until_closed(s)
    assert data == b""
    assert TIMEOUT * 0.9 <= closed - began < TIMEOUT * 5


def test_a_dripped_head_does_not_reset_the_timer(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket)
        began = time.monotonic()
        s.sendall(b"GET /v1/vms HTTP/1.1\r\n")
        while time.monotonic() - began < TIMEOUT * 5:  # a header line every TIMEOUT / 4
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            readable, _, _ = select.select([s], [], [], TIMEOUT / 4)
            if readable:
                try:
                    if s.recv(1) == b"":
                        break
                except ConnectionResetError:  # closed with our last header unread
                    break
        closed = time.monotonic()
    assert TIMEOUT * 0.9 <= closed - began < TIMEOUT * 3


def test_an_idle_keep_alive_connection_is_closed(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket)
        s.sendall(b"GET /v1/vms HTTP/1.1\r\nHost: q\r\n\r\n")
        began = time.monotonic()
        data, closed = read_until_closed(s)
    assert TIMEOUT * 0.9 <= closed - began < TIMEOUT * 5
    assert data.startswith(b"HTTP/1.1 200")
    answered = data.split(b"\r\n\r\n", 1)[1]
    assert json.loads(answered) == []


def test_websockets_outlive_the_timeouts(daemon: Daemon) -> None:
    with unix_connect(daemon.socket, uri="ws://q/v1/events/stream") as events:
        # A connection opened after the WebSocket is closed by the header timeout ...
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(daemon.socket)
            assert read_until_closed(s)[0] == b""
        # ... and the WebSocket is still there, and still delivers.
        response = daemon.call("POST", "/v1/vms", json=definition("ws"))
        assert response.status_code == 201, response.text
        assert json.loads(events.recv(timeout=10))["vm"] == "ws"


def test_an_oversized_body_is_413_in_the_error_format(daemon: Daemon) -> None:
    big = definition("big") | {"padding": "x" * 5000}
    response = daemon.call("POST", "/v1/vms", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too-large"
    assert "4096 bytes" in response.json()["error"]["message"]
    assert response.headers["connection"] == "close"

    chunks = (json.dumps(big)[i : i + 1000].encode() for i in range(0, 6000, 1000))
    response = daemon.call("POST", "/v1/vms", content=chunks)  # chunked: no length declared
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too-large"

    assert daemon.call("POST", "/v1/vms", json=definition("small")).status_code == 201


def test_the_web_listener_caps_connections_per_address(patient: Daemon) -> None:
    daemon = patient
    assert daemon.web is not None
    host, port = daemon.web.rsplit(":", 1)
    held = [socket.create_connection((host, int(port))) for _ in range(CAP)]
    try:
        with socket.create_connection((host, int(port))) as extra:
            data, _ = read_until_closed(extra)
        assert data.startswith(b"HTTP/1.1 503")
        assert b"too-many-connections" in data
        assert httpx.get(f"http://{daemon.web}/login").status_code == 503
    finally:
        for s in held:
            s.close()
    # Slots come back as the connections go.
    deadline = time.monotonic() + 10
    while httpx.get(f"http://{daemon.web}/login").status_code == 503:
        assert time.monotonic() < deadline


def test_the_web_listener_closes_a_silent_connection(daemon: Daemon) -> None:
    assert daemon.web is not None
    host, port = daemon.web.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as s:
        began = time.monotonic()
        data, closed = read_until_closed(s)
    assert data == b""
    assert TIMEOUT * 0.9 <= closed - began < TIMEOUT * 5


def test_the_open_files_limit_is_raised_to_the_hard_limit(daemon_root: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the daemon
    d = Daemon(daemon_root, driver="fake")
    try:
        d.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert d.proc is not None
        limits = Path(f"/proc/{d.proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)]
    finally:
        d.cleanup()


def definition(name: str) -> dict[str, object]:
    return {"name": name, "memory": 64, "boot": {"kernel": "/bin/sh"}}


def test_the_web_listener_answers_an_oversized_body_413(daemon: Daemon) -> None:
    assert daemon.web is not None
    response = httpx.post(f"http://{daemon.web}/logout", content=b"x" * 5000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too-large"


def test_websockets_count_against_the_cap_while_they_are_open(daemon_root: Path) -> None:
    d = Daemon(daemon_root, driver="fake", options=("--max-conns-privileged", "3"))
    d.start()
    try:
        with contextlib.ExitStack() as stack:
            streams = [
                stack.enter_context(unix_connect(d.socket, uri="ws://q/v1/events/stream"))
                for _ in range(3)
            ]
            response = d.call("GET", "/v1/vms")  # root's share is taken by the WebSockets
            assert response.status_code == 503
            assert "at most 3" in response.json()["error"]["message"]
            streams[0].close()
            deadline = time.monotonic() + 10
            while (response := d.call("GET", "/v1/vms")).status_code == 503:
                assert time.monotonic() < deadline
            assert response.json() == []
    finally:
        d.cleanup()
