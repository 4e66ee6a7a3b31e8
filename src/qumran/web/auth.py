"""Who is using the web manager: one-time login tokens, session cookies, CSRF and origins.

The web manager listens on TCP, where the kernel cannot tell us who is calling. So the
identity comes from the UNIX socket: ``qumran web`` asks qumrand (SO_PEERCRED vouches for
its uid) for a one-time login token, and the browser trades it for a session cookie. The
cookie is HttpOnly (scripts cannot read it) and SameSite=Strict (other sites cannot make the
browser send it); every state-changing request must also carry the session's CSRF token,
and a WebSocket must come from a page this server served (its Origin is checked, because
browsers do not apply SameSite to the WebSocket handshake's origin policy).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

TOKEN_SECONDS = 300
SESSION_SECONDS = 12 * 3600
COOKIE = "qumran_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class Session:
    uid: int
    gid: int
    csrf: str
    expires: float


@dataclass
class WebAuth:
    """Tokens and sessions of one web server; ``base_url`` is where it is served."""

    base_url: str
    clock: Callable[[], float] = time.time  # tests pass a fake clock
    _tokens: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    _sessions: dict[str, Session] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not a base URL: {self.base_url!r}")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.hosts = _host_aliases(parts.netloc)

    def _now(self) -> float:
        return self.clock()

    # login tokens (issued on the UNIX socket, redeemed once over TCP)
    def issue_token(self, uid: int, gid: int) -> str:
        self._expire()
        token = secrets.token_urlsafe(32)
        self._tokens[_digest(token)] = (uid, gid, self._now() + TOKEN_SECONDS)
        return token

    def login_url(self, token: str) -> str:
        return f"{self.base_url}/login?token={token}"

    def redeem(self, token: str) -> tuple[str, Session] | None:
        """Trade a token for a new session (id, session); None if unknown, used or expired."""
        entry = self._tokens.pop(_digest(token), None)  # one use, even if it has expired
        if entry is None or entry[2] < self._now():
            return None
        uid, gid, _ = entry
        sid = secrets.token_urlsafe(32)
        session = Session(uid, gid, secrets.token_urlsafe(24), self._now() + SESSION_SECONDS)
        self._sessions[_digest(sid)] = session
        return sid, session

    # sessions
    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self._sessions.get(_digest(sid))
        if session is None:
            return None
        if session.expires < self._now():
            del self._sessions[_digest(sid)]
            return None
        return session

    def logout(self, sid: str) -> None:
        self._sessions.pop(_digest(sid), None)

    @staticmethod
    def csrf_ok(session: Session, supplied: str | None) -> bool:
        return bool(supplied) and hmac.compare_digest(session.csrf, supplied or "")

    # where requests come from
    def host_ok(self, host: str | None) -> bool:
        """The Host header names this server (a DNS-rebinding site's name does not)."""
        return host is not None and host.lower() in self.hosts

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        """The request comes from a page of this server (scheme and host:port match)."""
        if not origin or not self.host_ok(host):
            return False
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == (host or "").lower()

    def _expire(self) -> None:
        now = self._now()
        for key in [k for k, v in self._tokens.items() if v[2] < now]:
            del self._tokens[key]
        for key in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[key]


def _digest(secret: str) -> str:
    # Only digests are kept, so a memory dump or a debug print leaks no usable secret.
    return hashlib.sha256(secret.encode()).hexdigest()


def _host_aliases(netloc: str) -> frozenset[str]:
    netloc = netloc.lower()
    host, _, port = netloc.rpartition(":") if not netloc.endswith("]") else (netloc, "", "")
    names = {netloc}
    if host in ("127.0.0.1", "localhost", "[::1]") and port:
        names |= {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    return frozenset(names)
