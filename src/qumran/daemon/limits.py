"""Bounds on what one client can hold of qumrand: connections, time, and request bytes.

Without them, one ordinary user opening a thousand idle connections used up qumrand's
file descriptors and every user's `qumran list` hung. The numbers (docs/api.md, "Limits"):

- The UNIX API socket: at most ``per_uid`` open connections for each ordinary uid;
  root and the daemon's own uid get ``privileged`` (much higher, still finite, so that a
  runaway script of root's cannot starve qumrand either). A user's flood fills only that
  user's share.
- The web manager's TCP listener: at most ``web_per_address`` connections from one
  address and ``web_total`` in all.
- A connection must send a complete request (head and body) within ``header_timeout``
  seconds of connecting or of the previous answer; one idle between requests for
  ``idle_timeout`` seconds is closed. WebSockets (console, events, VNC) still count
  against the caps but are never cut by these two timers: they are meant to last.
- A request body over ``max_body`` bytes is answered 413 and the connection closed.

A connection over a cap is answered 503 in the API's error format and closed at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    per_uid: int = 64
    privileged: int = 1024
    web_total: int = 256
    web_per_address: int = 32
    header_timeout: float = 10.0
    idle_timeout: int = 5  # whole seconds: uvicorn keeps it as an int
    max_body: int = 1 << 20

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Limits:
        return cls(**{name: getattr(args, name) for name in _OPTIONS})


# field -> (option, type, metavar, help); the defaults are Limits'.
_OPTIONS: dict[str, tuple[str, type, str, str]] = {
    "per_uid": ("--max-conns-per-uid", int, "N", "open API connections of each non-root uid"),
    "privileged": ("--max-conns-privileged", int, "N", "open API connections of root and "
                   "of qumrand's own uid"),
    "web_total": ("--max-web-conns", int, "N", "open web manager connections in all"),
    "web_per_address": ("--max-web-conns-per-address", int, "N",
                        "open web manager connections from one address"),
    "header_timeout": ("--header-timeout", float, "SECONDS",
                       "time a connection has to send a complete request"),
    "idle_timeout": ("--idle-timeout", int, "SECONDS",
                     "time an idle keep-alive connection is kept"),
    "max_body": ("--max-body", int, "BYTES", "largest request body (larger: 413)"),
}  # fmt: skip


def add_options(parser: argparse.ArgumentParser) -> None:
    """qumrand's options for the limits: --max-conns-per-uid, --header-timeout, ..."""
    defaults = Limits()
    group = parser.add_argument_group("limits (see docs/api.md)")
    for name, (flag, kind, metavar, text) in _OPTIONS.items():
        group.add_argument(
            flag, dest=name, type=_positive(kind), metavar=metavar,
            default=getattr(defaults, name), help=f"{text} (default: %(default)s)",
        )  # fmt: skip


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
        return value

    return parse


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return the new soft limit.

    The caps above keep clients within it; the default soft limit (often 1024) would
    leave little room for VMs' sockets, logs and pidfds beside them.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, exc)
            return soft
    return hard


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413, not read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._refuse(send)
            return
        seen = 0
        over = started = False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # chunked, so no length was declared
                over = True
                return {"type": "http.disconnect"}  # the app stops reading here
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a cut-off body; ours replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = error_body(
            "too-large",
            f"the request body is larger than {self.limit} bytes (qumrand --max-body)",
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the rest of the body is not worth reading
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value[:20])  # h11 has checked it is digits
            except ValueError:
                return None
    return None
