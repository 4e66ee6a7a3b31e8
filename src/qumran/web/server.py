"""The web manager's ASGI app: pages, JSON calls and WebSockets over one Manager.

qumrand serves it on a TCP address next to its UNIX-socket API. It adds no rules of its
own about who may do what: each request acts as its session's user through the Manager,
so ownership is the daemon's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qumran.daemon.manager import Manager
from qumran.errors import QumranError
from qumran.web import networks, pages, render, sockets, storage
from qumran.web.auth import COOKIE, WebAuth
from qumran.web.guard import HostCheck, LoginRequired, auth_of

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# Everything from this server, nothing inline but styles (xterm.js and uPlot set them).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # login URLs carry a token: never to others
]
# Pages show live state and carry a CSRF token: never cached. Static files are
# revalidated (ETag), so a rebuilt web/ asset is picked up at once but costs a 304 only.
NO_STORE = (b"cache-control", b"no-store")
REVALIDATE = (b"cache-control", b"no-cache")


def build_web_app(manager: Manager, auth: WebAuth) -> ASGIApp:
    app = FastAPI(title="Qumran web manager", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.auth = auth
    app.include_router(pages.routes(manager))
    app.include_router(storage.routes(manager))
    app.include_router(networks.routes(manager))
    app.include_router(sockets.routes(manager))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(QumranError)
    async def _refused(request: Request, exc: QumranError) -> Response:
        if pages.wants_json(request):
            return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status)
        session = (
            None
            if isinstance(exc, LoginRequired)
            else auth_of(request).session(request.cookies.get(COOKIE))
        )
        template = "login.html" if isinstance(exc, LoginRequired) else "error.html"
        return render.page(request, template, session, exc.http_status, message=exc.message)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.error("web: internal error on %s %s: %s", request.method, request.url.path, exc)
        log.debug("traceback", exc_info=exc)
        # The exception's text may name the daemon's paths or data: the log has it.
        body = {"error": {"code": "internal", "message": "internal error in qumrand (see its log)"}}
        return JSONResponse(body, status_code=500)

    return HostCheck(SecurityHeaders(app), auth)


class SecurityHeaders:
    """The same protective headers on every HTTP answer, static files included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        cache = REVALIDATE if scope["path"].startswith("/static/") else NO_STORE

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *HEADERS, cache]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
