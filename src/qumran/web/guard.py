"""Request checks of the web manager: host, session, CSRF; and the Caller a session acts as."""

from __future__ import annotations

from typing import Any

from fastapi import Request, WebSocket
from starlette.types import ASGIApp, Receive, Scope, Send

from qumran.daemon.manager import Caller
from qumran.errors import PermissionDenied, QumranError
from qumran.web.auth import COOKIE, CSRF_FIELD, CSRF_HEADER, Session, WebAuth

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class LoginRequired(QumranError):
    """No session, or it expired: the person must log in again."""

    code = "login-required"
    http_status = 401


class Forged(PermissionDenied):
    """A state-changing request without this session's CSRF token or from another site."""


def auth_of(conn: Request | WebSocket) -> WebAuth:
    auth: WebAuth = conn.app.state.auth
    return auth


def session_of(conn: Request | WebSocket) -> Session:
    session = auth_of(conn).session(conn.cookies.get(COOKIE))
    if session is None:
        raise LoginRequired("You are not logged in, or your session ended.")
    return session


async def current(request: Request) -> Session:
    """Dependency of every page and read-only call: a logged-in session."""
    return session_of(request)


async def acting(request: Request) -> Session:
    """Dependency of every state-changing call: a session, its CSRF token, our own origin."""
    session = session_of(request)
    auth = auth_of(request)
    origin = request.headers.get("origin")
    if origin is not None and not auth.origin_ok(origin, request.headers.get("host")):
        raise Forged(f"refused a request from another site ({origin})")
    supplied = request.headers.get(CSRF_HEADER)
    if supplied is None and _is_form(request):
        value = (await request.form()).get(CSRF_FIELD)
        supplied = value if isinstance(value, str) else None
    if not auth.csrf_ok(session, supplied):
        raise Forged(
            "refused a request without this session's CSRF token "
            "(a forged cross-site request, or a page from an older session: reload it)"
        )
    return session


def caller(session: Session) -> Caller:
    return Caller(uid=session.uid, gid=session.gid)


def _is_form(request: Request) -> bool:
    kind = request.headers.get("content-type", "")
    return kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data"))


class HostCheck:
    """Answer only requests addressed to this server by name (no DNS rebinding)."""

    def __init__(self, app: ASGIApp, auth: WebAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            host = headers.get(b"host", b"").decode("latin-1")
            if not self.auth.host_ok(host):
                await _refuse(scope, send, f"unknown host {host!r}")
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, message: str) -> None:
    body = message.encode()
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": 421,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
