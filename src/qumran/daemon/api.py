"""The HTTP/JSON + WebSocket API (docs/api.md), served on qumrand's UNIX socket."""

from __future__ import annotations

import logging
import os
import socket as socketlib
from typing import Any

from fastapi import Body, FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from qumran import __version__
from qumran.daemon import streams
from qumran.daemon.manager import Caller, Manager
from qumran.errors import InvalidState, PermissionDenied, QumranError

log = logging.getLogger(__name__)


class VmInfo(BaseModel):
    name: str
    uuid: str
    owner: int
    state: str
    reason: str
    hypervisor: str
    pid: int | None
    vcpus: int
    memory_mib: int
    autostart: bool
    cpu_time: float | None
    rss_bytes: int | None
    started_at: float | None
    uptime: float | None
    definition: dict[str, Any]


class Autostart(BaseModel):
    enabled: bool


def caller_of(conn: Request | WebSocket) -> Caller:
    peer = getattr(conn.state, "peer", None)
    if not isinstance(peer, Caller):
        raise PermissionDenied("the caller's identity is unknown (connect on the UNIX socket)")
    return peer


def build_app(manager: Manager) -> FastAPI:
    app = FastAPI(title="qumrand", version=__version__, description="Qumran management API")

    @app.exception_handler(QumranError)
    async def _qumran_error(request: Request, exc: QumranError) -> JSONResponse:
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        body = {"error": {"code": "invalid-argument", "message": f"bad request: {detail}"}}
        return JSONResponse(body, status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s: %s", request.method, request.url.path, exc)
        log.debug("traceback", exc_info=exc)
        body = {"error": {"code": "internal", "message": f"internal error: {exc}"}}
        return JSONResponse(body, status_code=500)

    @app.get("/v1/host")
    async def host(request: Request) -> dict[str, Any]:
        caller = caller_of(request)
        return {
            "hostname": socketlib.gethostname(),
            "version": __version__,
            "uid": caller.uid,
            "daemon_uid": os.geteuid(),
            "drivers": [vars(d.host_info()) for d in manager.drivers.values()],
        }

    @app.get("/v1/vms")
    async def list_vms(request: Request, all: bool = False) -> list[VmInfo]:
        doms = manager.visible(caller_of(request))
        return [VmInfo(**d.info()) for d in doms if all or d.active]

    @app.post("/v1/vms", status_code=201)
    async def define(
        request: Request,
        doc: dict[str, Any] = Body(...),  # noqa: B008
        force: bool = False,  # memory beyond the host's RAM
    ) -> VmInfo:
        return VmInfo(**(await manager.define(caller_of(request), doc, force=force)).info())

    @app.get("/v1/vms/{name}")
    async def get_vm(request: Request, name: str) -> VmInfo:
        return VmInfo(**manager.get(caller_of(request), name).info())

    @app.delete("/v1/vms/{name}", status_code=204)
    async def undefine(request: Request, name: str) -> Response:
        await manager.undefine(caller_of(request), name)
        return Response(status_code=204)

    @app.put("/v1/vms/{name}/autostart")
    async def autostart(request: Request, name: str, body: Autostart) -> VmInfo:
        dom = await manager.set_autostart(caller_of(request), name, body.enabled)
        return VmInfo(**dom.info())

    for action in ("start", "shutdown", "destroy", "reboot", "reset", "suspend", "resume"):
        _add_action(app, manager, action)

    @app.get("/v1/vms/{name}/stats")
    async def stats(request: Request, name: str) -> dict[str, Any]:
        dom = manager.get(caller_of(request), name)
        return {"interval": manager.stats.interval, "samples": manager.stats.samples(dom)}

    @app.websocket("/v1/events/stream")
    async def event_stream(websocket: WebSocket) -> None:
        await _event_session(manager, websocket)

    @app.get("/v1/events")
    async def events(request: Request, since: int = 0) -> list[dict[str, Any]]:
        caller = caller_of(request)
        everything = caller.uid in (0, os.geteuid())
        return manager.events.history(since, None if everything else caller.uid)

    @app.websocket("/v1/vms/{name}/console")
    async def console(websocket: WebSocket, name: str) -> None:
        await _console_session(manager, websocket, name)

    return app


def _add_action(app: FastAPI, manager: Manager, action: str) -> None:
    method = getattr(manager, action)

    async def handler(request: Request, name: str) -> VmInfo:
        return VmInfo(**(await method(caller_of(request), name)).info())

    handler.__name__ = action
    app.post(f"/v1/vms/{{name}}/{action}", name=action, summary=f"{action} a VM")(handler)


async def _event_session(manager: Manager, websocket: WebSocket) -> None:
    try:
        caller = caller_of(websocket)
    except QumranError as exc:
        await streams.deny(websocket, exc)
        return
    await streams.event_stream(manager.events, websocket, caller.uid)


async def _console_session(manager: Manager, websocket: WebSocket, name: str) -> None:
    try:
        dom = manager.get(caller_of(websocket), name)
        if dom.run is None:
            raise InvalidState(f"VM {name!r} is not running; start it first")
    except QumranError as exc:
        await streams.deny(websocket, exc)
        return
    await streams.console_stream(dom.run.console, websocket)
