"""The web manager inside a real qumrand (fake driver): tokens from the UNIX socket bound
to the caller's uid (SO_PEERCRED, a real second uid), live events and the shared console
over real WebSockets, and `qumran web`."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir

QUMRAN = str(Path(sys.executable).parent / "qumran")
NOBODY = 65534  # a second, real uid for the kernel (SO_PEERCRED), without creating users


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    root = short_tmpdir()
    d = Daemon(root, driver="fake", web=f"127.0.0.1:{free_port()}")
    d.start()
    yield d
    d.cleanup()
    remove_tmpdir(root)


class Session:
    """A logged-in browser, reduced to its cookie and CSRF token."""

    def __init__(self, daemon: Daemon, login_url: str) -> None:
        assert daemon.web is not None
        self.base = f"http://{daemon.web}"
        assert login_url.startswith(f"{self.base}/login?token=")
        with httpx.Client(base_url=self.base) as c:
            response = c.get(login_url)
        assert response.status_code == 303, response.text
        self.cookie = f"qumran_session={response.cookies['qumran_session']}"
        page = self.get("/").text
        found = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert found
        self.csrf = found.group(1)
        self.page = page

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base + path, headers={"cookie": self.cookie})

    def post(self, path: str, **kw: Any) -> httpx.Response:
        headers = {"cookie": self.cookie, "x-csrf-token": self.csrf, "accept": "application/json"}
        return httpx.post(self.base + path, headers=headers, **kw)

    def ws(self, path: str, origin: str | None = None) -> ClientConnection:
        url = self.base.replace("http:", "ws:") + path
        return connect(
            url,
            origin=Origin(origin or self.base),
            additional_headers={"cookie": self.cookie},
            open_timeout=10,
        )


def token_as(daemon: Daemon, uid: int | None) -> dict[str, Any]:
    """POST /v1/web/token over the UNIX socket, from a process running as ``uid``."""
    request = (
        b"POST /v1/web/token HTTP/1.1\r\nHost: q\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the other user, ask, hand the answer back
        try:
            os.close(read)
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(daemon.socket)
                s.sendall(request)
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            os.write(write, answer)
        finally:
            os._exit(0)
    os.close(write)
    answer = b""
    while chunk := os.read(read, 65536):
        answer += chunk
    os.close(read)
    os.waitpid(pid, 0)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    result: dict[str, Any] = json.loads(body)
    return result


def define(daemon: Daemon, name: str) -> None:
    doc = {"name": name, "memory": 64, "boot": {"kernel": "/bin/sh"}}
    assert daemon.call("POST", "/v1/vms", json=doc).status_code == 201


def test_a_token_logs_in_the_uid_that_asked_for_it(daemon: Daemon) -> None:
    me = Session(daemon, token_as(daemon, None)["url"])
    assert f"uid {os.getuid()}" in me.page
    if os.geteuid() != 0:
        pytest.skip("a second uid needs root")
    define(daemon, "roots")
    other = Session(daemon, token_as(daemon, NOBODY)["url"])
    assert f"uid {NOBODY}" in other.page
    assert other.get("/api/vms").json() == []
    refused = other.post("/vms/roots/start")
    assert refused.status_code == 403
    assert "belongs to another user" in refused.json()["error"]["message"]
    assert daemon.vm("roots")["state"] == "shutoff"
    assert "roots" in [v["name"] for v in me.get("/api/vms").json()]


def test_the_token_route_is_not_on_the_tcp_port(daemon: Daemon) -> None:
    assert daemon.web is not None
    response = httpx.post(f"http://{daemon.web}/v1/web/token")
    assert response.status_code in (404, 405)


def test_events_arrive_live_and_only_for_their_owner(daemon: Daemon) -> None:
    if os.geteuid() != 0:
        pytest.skip("a second uid needs root")
    me = Session(daemon, token_as(daemon, None)["url"])
    other = Session(daemon, token_as(daemon, NOBODY)["url"])
    with me.ws("/ws/events") as mine, other.ws("/ws/events") as theirs:
        define(daemon, "rootvm")
        assert json.loads(mine.recv(timeout=10))["vm"] == "rootvm"
        form = {"csrf": other.csrf, "name": "nobodyvm", "memory": "64", "vcpus": "1",
                "boot": "kernel", "kernel": "/bin/sh"}  # fmt: skip
        made = httpx.post(other.base + "/vms", data=form, headers={"cookie": other.cookie})
        assert made.status_code == 303, made.text
        event = json.loads(theirs.recv(timeout=10))  # its own, not rootvm's before it
        assert (event["vm"], event["event"], event["owner"]) == ("nobodyvm", "defined", NOBODY)
        assert json.loads(mine.recv(timeout=10))["vm"] == "nobodyvm"  # root sees all


def test_a_websocket_from_another_origin_is_refused(daemon: Daemon) -> None:
    me = Session(daemon, token_as(daemon, None)["url"])
    with pytest.raises(InvalidStatus) as refused:
        me.ws("/ws/events", origin="http://evil.example")
    assert refused.value.response.status_code == 403


def test_web_viewers_and_the_api_console_share_one_stream(daemon: Daemon) -> None:
    me = Session(daemon, token_as(daemon, None)["url"])
    define(daemon, "con")
    assert me.post("/vms/con/start").status_code == 200
    # `qumran console --until` matches only what comes after it connected ("Connected to").
    cli = subprocess.Popen(
        [QUMRAN, "console", "con", "--until", "typed in the web", "--timeout", "10"],
        env=daemon.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert cli.stderr is not None and cli.stderr.readline().startswith("Connected to con")
    with me.ws("/ws/vms/con/console") as one, me.ws("/ws/vms/con/console") as two:
        for viewer in (one, two):
            read_until(viewer, "FAKE-VM READY")
        one.send(b"typed in the web\n")
        for viewer in (one, two):
            read_until(viewer, "typed in the web")
    out, err = cli.communicate(timeout=30)
    assert cli.returncode == 0, err  # `qumran console` sees what the web typed
    assert "FAKE-VM READY" not in out  # printed before it connected
    assert me.post("/vms/con/destroy").status_code == 200


def read_until(ws: ClientConnection, text: str) -> str:
    seen = ""
    while text not in seen:
        frame = ws.recv(timeout=10)
        seen += frame.decode(errors="replace") if isinstance(frame, bytes) else frame
    return seen


def test_qumran_web_prints_a_login_url(daemon: Daemon) -> None:
    cli = subprocess.run(
        [QUMRAN, "web"], env=daemon.env, capture_output=True, text=True, timeout=30
    )
    assert cli.returncode == 0, cli.stderr
    url = cli.stdout.strip()
    assert f"uid {os.getuid()}" in Session(daemon, url).page
    with httpx.Client() as c:
        assert c.get(url).status_code == 403  # used up


def test_qumran_web_without_the_web_manager(fake_daemon: Daemon) -> None:
    cli = subprocess.run(
        [QUMRAN, "web"], env=fake_daemon.env, capture_output=True, text=True, timeout=30
    )
    assert cli.returncode == 1
    assert "turn it on with `enabled = true` under [web] in its settings file" in cli.stderr
    assert "then `qumran daemon restart`; or start it with --web" in cli.stderr


def test_a_browser_that_vanishes_leaves_no_error(daemon: Daemon) -> None:
    me = Session(daemon, token_as(daemon, None)["url"])
    define(daemon, "gone")
    assert me.post("/vms/gone/start").status_code == 200
    for path in ("/ws/vms/gone/console", "/ws/events"):
        ws = me.ws(path)
        if "console" in path:
            read_until(ws, "FAKE-VM READY")
        ws.socket.shutdown(socket.SHUT_RDWR)  # no closing handshake: a killed tab
        ws.socket.close()
    with me.ws("/ws/events") as ws:  # still served; and the next event reaches it
        define(daemon, "after")
        assert json.loads(ws.recv(timeout=10))["vm"] == "after"
    assert me.post("/vms/gone/destroy").status_code == 200
    log = daemon.log.read_text()  # (the UNIX API's own sockets are not under test here)
    assert "qumran/web/sockets.py" not in log, log[log.find("qumran/web/sockets.py") - 3000 :]
