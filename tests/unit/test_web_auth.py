"""WebAuth on its own: one-time tokens, expiry, sessions, CSRF and origin checks."""

from __future__ import annotations

import pytest

from qumran.web.auth import SESSION_SECONDS, TOKEN_SECONDS, WebAuth


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(clock: Clock) -> WebAuth:
    return WebAuth("http://127.0.0.1:8090", clock=clock)


def test_a_token_logs_in_its_uid_once(auth: WebAuth) -> None:
    token = auth.issue_token(1001, 1002)
    assert auth.login_url(token) == f"http://127.0.0.1:8090/login?token={token}"
    redeemed = auth.redeem(token)
    assert redeemed is not None
    sid, session = redeemed
    assert (session.uid, session.gid) == (1001, 1002)
    assert auth.session(sid) == session
    assert auth.redeem(token) is None  # reused


def test_tokens_are_unguessable_and_unrelated(auth: WebAuth) -> None:
    tokens = {auth.issue_token(0, 0) for _ in range(50)}
    assert len(tokens) == 50 and all(len(t) >= 40 for t in tokens)
    assert auth.redeem("") is None
    assert auth.redeem("x" * 43) is None


def test_a_token_expires_after_five_minutes(auth: WebAuth, clock: Clock) -> None:
    fresh, stale = auth.issue_token(7, 7), auth.issue_token(8, 8)
    clock.now += TOKEN_SECONDS - 1
    assert auth.redeem(fresh) is not None
    clock.now += 2
    assert auth.redeem(stale) is None


def test_sessions_expire_and_log_out(auth: WebAuth, clock: Clock) -> None:
    first = auth.redeem(auth.issue_token(5, 5))
    second = auth.redeem(auth.issue_token(5, 5))
    assert first is not None and second is not None
    assert first[0] != second[0] and first[1].csrf != second[1].csrf
    auth.logout(first[0])
    assert auth.session(first[0]) is None
    assert auth.session(second[0]) is not None
    clock.now += SESSION_SECONDS + 1
    assert auth.session(second[0]) is None
    assert auth.session(None) is None and auth.session("nonsense") is None


def test_csrf_token_must_be_this_sessions(auth: WebAuth) -> None:
    mine = auth.redeem(auth.issue_token(1, 1))
    theirs = auth.redeem(auth.issue_token(1, 1))
    assert mine is not None and theirs is not None
    assert auth.csrf_ok(mine[1], mine[1].csrf)
    assert not auth.csrf_ok(mine[1], theirs[1].csrf)
    assert not auth.csrf_ok(mine[1], None)
    assert not auth.csrf_ok(mine[1], "")


def test_hosts_and_origins(auth: WebAuth) -> None:
    for host in ("127.0.0.1:8090", "localhost:8090", "LOCALHOST:8090"):
        assert auth.host_ok(host)
    for other in ("evil.example:8090", "127.0.0.1:8091", "127.0.0.1", "", None):
        assert not auth.host_ok(other)
    assert auth.origin_ok("http://127.0.0.1:8090", "127.0.0.1:8090")
    assert auth.origin_ok("http://localhost:8090", "localhost:8090")
    assert not auth.origin_ok("http://evil.example", "127.0.0.1:8090")
    assert not auth.origin_ok("http://localhost:8090", "127.0.0.1:8090")  # another origin
    assert not auth.origin_ok("null", "127.0.0.1:8090")
    assert not auth.origin_ok(None, "127.0.0.1:8090")
    assert not auth.origin_ok("http://evil.example:8090", "evil.example:8090")  # rebinding


def test_a_bad_base_url_is_refused() -> None:
    with pytest.raises(ValueError, match="not a base URL"):
        WebAuth("127.0.0.1:8090")
