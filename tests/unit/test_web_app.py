"""The web manager's HTTP and WebSocket rules, in-process against a Manager with the fake
driver: cookies, CSRF, origins, hosts, ownership, and forms that change nothing when bad.

Two users are two sessions bound to different uids, as ``POST /v1/web/token`` would bind
them for two callers; the Manager applies the daemon's own ownership rules to both.
Open WebSocket sessions (events, console) are tested against a real qumrand in
test_web_daemon.py: the test client cancels an open socket's handler on exit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse

from qumran.config.validate import validate_spec
from qumran.daemon.manager import Caller, Manager
from qumran.daemon.store import Store
from qumran.drivers.fake import FakeDriver
from qumran.errors import InvalidArgument
from qumran.web.auth import COOKIE, WebAuth
from qumran.web.server import build_web_app

BASE = "https://testserver"
ALICE, BOB = 2001, 2002  # only define and look: their VM processes could not run our venv
ME = os.getuid()  # starts VMs (the fake VM runs as its owner)


@dataclass
class User:
    uid: int
    sid: str
    csrf: str

    @property
    def cookie(self) -> dict[str, str]:
        return {"cookie": f"{COOKIE}={self.sid}"}


@dataclass
class Web:
    client: TestClient
    auth: WebAuth
    manager: Manager

    def login(self, uid: int) -> User:
        token = self.auth.issue_token(uid, uid)
        response = self.client.get(f"/login?token={token}", follow_redirects=False)
        assert response.status_code == 303, response.text
        sid = response.cookies[COOKIE]
        self.client.cookies.clear()  # each request names its user explicitly
        session = self.auth.session(sid)
        assert session is not None
        return User(uid, sid, session.csrf)

    def get(self, user: User | None, path: str, **kw: Any) -> Any:
        headers = user.cookie if user else {}
        return self.client.get(path, headers={**headers, **kw.pop("headers", {})}, **kw)

    def post(self, user: User, path: str, csrf: str | None = "mine", **kw: Any) -> Any:
        headers = {**user.cookie, "accept": "application/json", **kw.pop("headers", {})}
        if csrf is not None:
            headers["x-csrf-token"] = user.csrf if csrf == "mine" else csrf
        return self.client.post(path, headers=headers, follow_redirects=False, **kw)

    def define(self, uid: int, name: str) -> None:
        doc = {"name": name, "memory": 64, "boot": {"kernel": "/bin/sh"}}
        self.client.portal.call(self.manager.define, Caller(uid, uid), doc)  # type: ignore[union-attr]

    def state(self, name: str) -> str:
        return self.manager.domains[name].state.value


class Late:
    """An ASGI app made inside the test client's event-loop thread (the store's SQLite
    connection belongs to the thread that opened it, as in qumrand)."""

    app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # qumrand runs the web app with lifespan="off"
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await self.app(scope, receive, send)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    auth = WebAuth(BASE)
    late = Late()

    def make() -> tuple[Store, Manager]:
        store = Store(tmp_path / "qumran.db")
        fake = FakeDriver()
        manager = Manager(store, {"qemu": fake, "native": fake}, tmp_path / "run")
        late.app = build_web_app(manager, auth)
        return store, manager

    with TestClient(late, base_url=BASE) as client:
        store, manager = client.portal.call(make)  # type: ignore[union-attr]
        yield Web(client, auth, manager)
        for dom in list(manager.domains.values()):
            if dom.active:
                client.portal.call(manager.destroy, Caller(0, 0), dom.name)  # type: ignore[union-attr]
        client.portal.call(manager.close)  # type: ignore[union-attr]
        client.portal.call(store.close)  # type: ignore[union-attr]


def error_of(response: Any) -> str:
    message: str = response.json()["error"]["message"]
    return message


# logging in
def test_nothing_without_a_session(web: Web) -> None:
    for path in ("/", "/vms/new", "/vms/x", "/vms/x/console"):
        response = web.get(None, path)
        assert response.status_code == 401, path
        assert "qumran web" in response.text
    assert web.get(None, "/api/vms").status_code == 401
    forged = {"cookie": f"{COOKIE}=made-up"}
    assert web.client.get("/api/vms", headers=forged).status_code == 401


def test_the_session_cookie_is_secure_httponly_strict(web: Web) -> None:
    token = web.auth.issue_token(ALICE, ALICE)
    response = web.client.get(f"/login?token={token}", follow_redirects=False)
    cookie = response.headers["set-cookie"].lower()
    for flag in ("httponly", "secure", "samesite=strict", "path=/"):
        assert flag in cookie
    assert response.headers["location"] == "/"
    assert response.headers["referrer-policy"] == "same-origin"


def test_wrong_and_reused_tokens_are_refused(web: Web) -> None:
    response = web.client.get("/login?token=wrong", follow_redirects=False)
    assert response.status_code == 403 and "not valid" in response.text
    assert COOKIE not in response.cookies
    token = web.auth.issue_token(ALICE, ALICE)
    assert web.client.get(f"/login?token={token}", follow_redirects=False).status_code == 303
    web.client.cookies.clear()
    again = web.client.get(f"/login?token={token}", follow_redirects=False)
    assert again.status_code == 403 and "already used" in again.text


def test_logout_ends_the_session(web: Web) -> None:
    alice = web.login(ALICE)
    assert web.get(alice, "/api/vms").status_code == 200
    response = web.post(alice, "/logout", headers={"accept": "text/html"})
    assert response.status_code == 200
    assert web.get(alice, "/api/vms").status_code == 401


def test_only_our_own_host_name_is_answered(web: Web) -> None:
    alice = web.login(ALICE)
    response = web.get(alice, "/api/vms", headers={"host": "rebound.example"})
    assert response.status_code == 421


# CSRF and origins
def test_a_change_needs_this_sessions_csrf_token(web: Web) -> None:
    alice, other = web.login(ME), web.login(ME)
    web.define(ME, "a1")
    for csrf in (None, "", "guess", other.csrf):
        response = web.post(alice, "/vms/a1/start", csrf=csrf)
        assert response.status_code == 403, csrf
        assert "CSRF" in error_of(response)
        assert web.state("a1") == "shutoff"
    response = web.post(alice, "/vms/a1/start")
    assert response.status_code == 200 and response.json()["vm"]["state"] == "running"


def test_a_form_carries_the_token_as_a_field(web: Web) -> None:
    alice = web.login(ME)
    web.define(ME, "a1")
    headers = {**alice.cookie}
    bare = web.client.post("/vms/a1/start", data={"csrf": "nope"}, headers=headers)
    assert bare.status_code == 403 and web.state("a1") == "shutoff"
    response = web.client.post(
        "/vms/a1/start", data={"csrf": alice.csrf}, headers=headers, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/vms/a1"
    assert web.state("a1") == "running"


def test_a_cross_site_request_is_refused_even_with_the_token(web: Web) -> None:
    alice = web.login(ME)
    web.define(ME, "a1")
    response = web.post(alice, "/vms/a1/start", headers={"origin": "https://evil.example"})
    assert response.status_code == 403 and "another site" in error_of(response)
    assert web.state("a1") == "shutoff"
    ok = web.post(alice, "/vms/a1/start", headers={"origin": BASE})
    assert ok.status_code == 200


def test_websockets_check_the_origin_and_the_session(web: Web) -> None:
    alice = web.login(ALICE)
    for headers in ({"origin": "https://evil.example"}, {}):
        with (
            pytest.raises(WebSocketDenialResponse) as denied,
            web.client.websocket_connect("/ws/events", headers={**alice.cookie, **headers}),
        ):
            pass
        assert denied.value.status_code == 403
    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        web.client.websocket_connect("/ws/events", headers={"origin": BASE}),
    ):
        pass
    assert denied.value.status_code == 401


# ownership
def test_another_users_vm_is_refused_and_unchanged(web: Web) -> None:
    alice, bob = web.login(ALICE), web.login(BOB)
    web.define(ALICE, "avm")
    assert [v["name"] for v in web.get(alice, "/api/vms").json()] == ["avm"]
    assert web.get(bob, "/api/vms").json() == []
    assert "avm" not in web.get(bob, "/").text
    page = web.get(bob, "/vms/avm")
    assert page.status_code == 403 and "belongs to another user" in page.text
    assert web.get(bob, "/api/vms/avm/stats").status_code == 403
    for action in ("start", "destroy", "undefine"):
        response = web.post(bob, f"/vms/avm/{action}")
        assert response.status_code == 403, action
        assert "belongs to another user" in error_of(response)
    assert web.state("avm") == "shutoff" and "avm" in web.manager.domains
    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        web.client.websocket_connect("/ws/vms/avm/console", headers={**bob.cookie, "origin": BASE}),
    ):
        pass
    assert denied.value.status_code == 403


# forms
def test_an_invalid_form_shows_the_daemons_message_and_defines_nothing(web: Web) -> None:
    alice = web.login(ALICE)
    form = {"csrf": alice.csrf, "name": "bad name", "memory": "8", "vcpus": "0",
            "boot": "kernel", "kernel": "vmlinuz", "disks": "/x.img vmdk"}  # fmt: skip
    response = web.client.post("/vms", data=form, headers=alice.cookie)
    assert response.status_code == 400
    doc = {
        "name": "bad name", "memory": "8", "vcpus": "0", "hypervisor": "qemu",
        "boot": {"kernel": "vmlinuz"}, "disks": [{"path": "/x.img", "format": "vmdk"}],
    }  # fmt: skip
    with pytest.raises(InvalidArgument) as expected:
        validate_spec(doc)
    shown = response.text.replace("&#39;", "'")
    assert expected.value.message in shown
    assert web.manager.domains == {}


def test_a_valid_form_defines_the_vm_as_its_user(web: Web) -> None:
    alice = web.login(ALICE)
    form = {"csrf": alice.csrf, "name": "made", "memory": "1G", "vcpus": "2", "boot": "kernel",
            "kernel": "/bin/sh", "cmdline": "console=ttyS0", "disks": "/bin/ls raw ro",
            "nics": "user 52:54:00:12:34:56", "serial": "on"}  # fmt: skip
    response = web.client.post("/vms", data=form, headers=alice.cookie, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/vms/made"
    dom = web.manager.domains["made"]
    assert dom.owner == ALICE
    assert (dom.spec.memory, dom.spec.vcpus) == (1024, 2)
    assert dom.record.definition["disks"] == [
        {"path": "/bin/ls", "format": "raw", "readonly": True}
    ]
    assert dom.record.definition["nics"][0]["mac"] == "52:54:00:12:34:56"
    again = web.client.post("/vms", data=form, headers=alice.cookie)
    assert again.status_code == 409 and "already exists" in again.text
