"""uvicorn protocols that keep each client within its share (see ``qumran.daemon.limits``).

A connection takes a slot under its key (the peer's uid on the UNIX socket, the peer's
address on TCP) when it is made and gives it back when it is lost, whichever protocol
holds the transport by then: an upgraded WebSocket keeps its slot. While the connection
owes us a request, a timer runs; it stops once the request has fully arrived or the
connection becomes a WebSocket, and starts again after each answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from qumran.daemon.limits import Limits, error_body

log = logging.getLogger(__name__)


class Slots:
    """Open connections counted by key: one past its key's cap, or past the total, is refused."""

    def __init__(self, cap: Callable[[Hashable], int], total: int | None = None) -> None:
        self.cap = cap
        self.total = total
        self.count: Counter[Hashable] = Counter()
        self.held: dict[asyncio.BaseTransport, Hashable] = {}
        self.warned: set[Hashable] = set()  # keys refused since they last gave a slot back

    def take(self, transport: asyncio.BaseTransport, key: Hashable) -> str | None:
        """Hold a slot for this connection, or say why not."""
        cap = self.cap(key)
        refused = None
        if self.count[key] >= cap:
            refused = f"too many connections from {key} (at most {cap} at a time)"
        elif self.total is not None and len(self.held) >= self.total:
            refused = f"too many connections (at most {self.total} at a time)"
        if refused is not None:
            # Once per burst: a flood of refusals must not become a flood of log lines.
            if key not in self.warned:
                self.warned.add(key)
                log.warning("refusing connections: %s", refused)
            return refused
        self.count[key] += 1
        self.held[transport] = key
        return None

    def give_back(self, transport: asyncio.BaseTransport) -> None:
        key = self.held.pop(transport, None)
        if key is not None:
            self.warned.discard(key)
            self.count[key] -= 1
            if self.count[key] <= 0:
                del self.count[key]


# h11 states of the client's side in which we still wait for (part of) a request.
_OWED = (h11.IDLE, h11.SEND_BODY)


class BoundedHTTP(H11Protocol):
    """HTTP/1.1 with a connection slot and a deadline for each request."""

    slots: ClassVar[Slots]
    request_timeout: ClassVar[float]
    # Bytes a starting qumrand read from this connection before this protocol took it
    # (daemon/early.py): handled as if just received, before anything more is read.
    replay = b""

    def identify(self, transport: asyncio.Transport) -> Hashable:
        """Who is connecting: the key the connection's slot counts under."""
        peer = transport.get_extra_info("peername")
        return peer[0] if isinstance(peer, tuple) else "?"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadline: asyncio.TimerHandle | None = None
        self.upgraded = False  # handed to a WebSocket protocol: no longer ours to time
        refused = self.slots.take(transport, self.identify(transport))
        if refused is not None:
            body = error_body("too-many-connections", refused + "; close some and retry")
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            transport.close()
            return
        self._watch()
        replay, self.replay = self.replay, b""
        if replay:
            self.data_received(replay)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watch()
        self.slots.give_back(self.transport)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self.upgraded = True  # a WebSocket lasts as long as its user wants
        self._stop_watch()
        super().handle_websocket_upgrade(event)

    def _watch(self) -> None:
        """Run the deadline while a request is owed, stop it once one has arrived."""
        owed = (
            self.conn.their_state in _OWED and not self.upgraded and not self.transport.is_closing()
        )
        if owed and self.deadline is None:
            self.deadline = self.loop.call_later(self.request_timeout, self._too_slow)
        elif not owed:
            self._stop_watch()

    def _stop_watch(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _too_slow(self) -> None:
        self.deadline = None
        if self.conn.their_state in _OWED:
            log.debug("closing a connection that sent no complete request in time")
            self.transport.close()


class BoundedWebSocket(WebSocketsSansIOProtocol):
    """The WebSocket an HTTP connection turns into: gives its slot back when it ends."""

    slots: ClassVar[Slots]

    def connection_lost(self, exc: Exception | None) -> None:
        self.slots.give_back(self.transport)
        super().connection_lost(exc)


def protocols(http: type[BoundedHTTP], slots: Slots, request_timeout: float) -> dict[str, Any]:
    """uvicorn.Config's ``http`` and ``ws`` for one listener, sharing ``slots``."""
    bound = {"slots": slots, "request_timeout": request_timeout}
    return {
        "http": type(http.__name__, (http,), bound),
        "ws": type("BoundedWebSocket", (BoundedWebSocket,), {"slots": slots}),
    }


def web_protocols(limits: Limits) -> dict[str, Any]:
    """uvicorn.Config options for the web manager's TCP listener: per address and in all."""
    slots = Slots(lambda _: limits.web_per_address, total=limits.web_total)
    return protocols(BoundedHTTP, slots, limits.header_timeout)
