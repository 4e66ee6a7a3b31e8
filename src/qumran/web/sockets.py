"""The web manager's WebSockets: live events, the serial console and the VNC display.

Each one is opened only for a logged-in session from a page of this server (Origin
checked: the handshake is not covered by CSRF tokens) and acts as the session's user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket

from qumran.daemon.domain import Domain
from qumran.daemon.manager import Manager
from qumran.daemon.streams import console_stream, deny, event_stream, pump_both
from qumran.errors import InvalidState, QumranError
from qumran.web.auth import Session
from qumran.web.guard import Forged, auth_of, caller, session_of

log = logging.getLogger(__name__)


async def admit(websocket: WebSocket) -> Session | None:
    """The session behind a handshake, or None after refusing it with an HTTP error."""
    try:
        session = session_of(websocket)
        headers = websocket.headers
        if not auth_of(websocket).origin_ok(headers.get("origin"), headers.get("host")):
            raise Forged(f"refused a WebSocket from another origin ({headers.get('origin')})")
    except QumranError as exc:
        await deny(websocket, exc)
        return None
    return session


def routes(manager: Manager) -> APIRouter:
    r = APIRouter()

    @r.websocket("/ws/events")
    async def events(websocket: WebSocket) -> None:
        session = await admit(websocket)
        if session is not None:
            await event_session(manager, websocket, session)

    @r.websocket("/ws/vms/{name}/console")
    async def console(websocket: WebSocket, name: str) -> None:
        dom = await _running_vm(manager, websocket, name)
        if dom is not None and dom.run is not None:
            await console_session(dom, websocket)

    @r.websocket("/ws/vms/{name}/vnc")
    async def vnc(websocket: WebSocket, name: str) -> None:
        dom = await _running_vm(manager, websocket, name)
        if dom is not None and dom.run is not None:
            await vnc_session(dom, websocket)

    return r


async def _running_vm(manager: Manager, websocket: WebSocket, name: str) -> Domain | None:
    session = await admit(websocket)
    if session is None:
        return None
    try:
        dom = manager.get(caller(session), name)
        if dom.run is None:
            raise InvalidState(f"VM {name!r} is not running; start it first")
    except QumranError as exc:
        await deny(websocket, exc)
        return None
    return dom


async def event_session(manager: Manager, websocket: WebSocket, session: Session) -> None:
    await event_stream(manager.events, websocket, session.uid)


async def console_session(dom: Domain, websocket: WebSocket) -> None:
    """One more viewer of the console stream `qumran console` reads (ConsoleBroker)."""
    assert dom.run is not None
    await console_stream(dom.run.console, websocket)


async def vnc_session(dom: Domain, websocket: WebSocket) -> None:
    """Relay RFB bytes between noVNC and a connection the hypervisor's display serves."""
    assert dom.run is not None
    try:
        if not dom.spec.graphics:
            raise InvalidState(f"VM {dom.name!r} has no graphical display (graphics: false)")
        display = await dom.run.instance.open_display()
        reader, writer = await asyncio.open_unix_connection(sock=display)
    except (QumranError, OSError) as exc:
        if isinstance(exc, OSError):
            exc = InvalidState(f"VM {dom.name!r}: cannot reach its display: {exc.strerror}")
        await deny(websocket, exc)
        return
    protocols = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="binary" if "binary" in protocols else None)

    async def to_browser() -> None:
        while chunk := await reader.read(65536):
            await websocket.send_bytes(chunk)
        await websocket.close(code=1000, reason="the display closed")

    async def from_browser() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            writer.write(message.get("bytes") or b"")
            await writer.drain()

    try:
        await pump_both(websocket, to_browser, from_browser)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
