"""WebSocket streams shared by the API and the web manager: the console and the events.

Both the UNIX-socket API (``qumran console``, ``/v1/events/stream``) and the browser
(xterm.js, the live VM list) read the same ConsoleBroker and EventBus through these.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import os
from collections.abc import Awaitable, Callable

from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from qumran.daemon.console import ConsoleBroker
from qumran.daemon.events import EventBus
from qumran.errors import InvalidArgument, QumranError

log = logging.getLogger(__name__)

_GONE = (WebSocketDisconnect, RuntimeError, OSError)  # the peer went away mid-stream


async def deny(websocket: WebSocket, exc: QumranError) -> None:
    """Refuse a handshake with a plain HTTP error and the usual body (Denial Response)."""
    body = {"error": exc.to_dict()}
    await websocket.send_denial_response(JSONResponse(body, status_code=exc.http_status))


async def drain(websocket: WebSocket) -> None:
    """Read until the peer disconnects (for streams that only send)."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def pump_both(
    websocket: WebSocket, a: Callable[[], Awaitable[None]], b: Callable[[], Awaitable[None]]
) -> None:
    """Run two pumps until either ends (or the peer goes away), stop the other, close."""
    tasks = {asyncio.ensure_future(a()), asyncio.ensure_future(b())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception) and not isinstance(result, _GONE):
                log.debug("stream ended: %r", result)
        with contextlib.suppress(*_GONE):
            await websocket.close()


class History(enum.Enum):
    """How a console viewer gets the output printed before it connected (``?history=``).

    A client that waits for a text (``qumran console --until``) must not find it in
    what was printed before it asked: it needs the recent output apart from the live
    output, or not at all. Older clients and the browser ask nothing and get INLINE.
    """

    INLINE = "inline"  # the recent output, then the live output, one undivided stream
    SEPARATE = "separate"  # the first message is the recent output (maybe empty), alone
    NONE = "none"  # only what is printed from now on

    @classmethod
    def parse(cls, value: str | None) -> History:
        if value is None:
            return cls.INLINE
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(h.value for h in cls)
            raise InvalidArgument(
                f"history={value[:40]!r} is not a console history mode; use one of {choices}"
            ) from None


async def console_stream(
    broker: ConsoleBroker, websocket: WebSocket, history: History = History.INLINE
) -> None:
    """One more viewer: the recent output, then everything that follows; keys to the guest."""
    # Subscribe before the handshake completes: once the client is connected, nothing
    # the guest prints can fall between the recent output and the live stream.
    recent, queue = broker.subscribe()
    try:
        await websocket.accept()
    except BaseException:
        broker.unsubscribe(queue)
        raise

    async def to_viewer() -> None:
        if history is History.SEPARATE or (history is History.INLINE and recent):
            await websocket.send_bytes(recent)
        while (chunk := await queue.get()) is not None:
            await websocket.send_bytes(chunk)
        await websocket.close(code=1000, reason="the VM stopped")

    async def from_viewer() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await broker.write(message.get("bytes") or (message.get("text") or "").encode())

    try:
        await pump_both(websocket, to_viewer, from_viewer)
    finally:
        broker.unsubscribe(queue)


async def event_stream(events: EventBus, websocket: WebSocket, uid: int) -> None:
    """Each lifecycle event ``uid`` may see, as one JSON text frame, as it happens."""
    everything = uid in (0, os.geteuid())  # the daemon's ownership rule
    await websocket.accept()
    queue = events.subscribe()

    async def push() -> None:
        while True:
            event = await queue.get()
            if everything or event.owner == uid:
                await websocket.send_text(json.dumps(dataclasses.asdict(event)))

    try:
        await pump_both(websocket, push, lambda: drain(websocket))
    finally:
        events.unsubscribe(queue)
