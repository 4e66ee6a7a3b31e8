"""The HTTP/JSON + WebSocket API (docs/api.md), served on qumrand's UNIX socket.

The OpenAPI document (``/openapi.json``) is the contract, checked by schemathesis in the
tests: every answer, errors included, is described there. The documents are declared
once, in ``qumran.client.schema``; a definition's schema is ``VmSpec``'s, the model the
daemon validates with.
"""

from __future__ import annotations

import json
import logging
import os
import socket as socketlib
from typing import Annotated, Any, cast

from fastapi import FastAPI, Path, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, TypeAdapter
from pydantic_core import to_json
from starlette.exceptions import HTTPException
from starlette.routing import Match

from qumran import __version__
from qumran.client.schema import (
    DaemonInfo,
    DriverInfo,
    ErrorBody,
    Event,
    HostInfo,
    InterfaceInfo,
    Sample,
    Stats,
    VmInfo,
)
from qumran.config.spec import VmSpec
from qumran.daemon import snapshots, streams
from qumran.daemon.admin import daemon_info
from qumran.daemon.manager import Caller, Manager
from qumran.drivers.base import HostInfo as DriverHostInfo
from qumran.errors import InvalidArgument, InvalidState, PermissionDenied, QumranError

log = logging.getLogger(__name__)

MAX_EVENT_ID = 2**63 - 1  # SQLite's INTEGER
Name = Annotated[str, Path(description="the VM's name", examples=["demo"])]

# Each status an API answer can have beside success, with the codes it carries.
ERRORS: dict[int, str] = {
    400: "invalid-argument: a malformed request, or a definition that fails validation",
    403: "permission-denied: the VM belongs to another user (or the caller is unknown)",
    404: "not-found: no such VM (or no such route)",
    405: "method-not-allowed: the route has no such method (`Allow` lists those it has)",
    409: "already-exists (define) or invalid-state (the VM's state does not allow it)",
    413: "too-large: the request body is over the limit (qumrand --max-body)",
    500: "hypervisor-error, storage-error (qemu-img failed), network-error (netlink, nft or"
    " dnsmasq failed) or internal (details in qumrand's log)",
    503: "too-many-connections: the caller holds its share of connections already",
    504: "timeout: the hypervisor did not answer in time",
}
# Every route: a bad request, an unknown caller, a large body, an internal error, a flood.
COMMON = (400, 403, 413, 500, 503)


# The error format, by reference: the schema itself goes in the document once, when it
# is asked for (``_contract``). Naming it as a response ``model`` instead would have
# FastAPI build a validator and serializer for every (route, status) pair, ~170 of
# them, 1.9 MiB that stay in qumrand for a document generated only on request.
REF = "#/components/schemas/{model}"


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error responses of a route, in the documented error format."""
    return {
        status: {
            "description": ERRORS[status],
            "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}},
        }
        for status in sorted({*statuses, *COMMON})
    }


class Autostart(BaseModel):
    enabled: bool


class SnapshotFile(BaseModel):
    # An absolute path, opened with the rights of the VM's owner.
    file: Annotated[str, Field(pattern=r"^/[^\x00]*$", max_length=4096)]


def caller_of(conn: Request | WebSocket) -> Caller:
    peer = getattr(conn.state, "peer", None)
    if not isinstance(peer, Caller):
        raise PermissionDenied("the caller's identity is unknown (connect on the UNIX socket)")
    return peer


def error(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    body: ErrorBody = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def build_app(manager: Manager) -> FastAPI:
    app = FastAPI(title="qumrand", version=__version__, description="Qumran management API")
    _handle_errors(app)
    _routes(app, manager)
    from qumran.daemon.api_storage import add_storage_routes  # it imports this module

    add_storage_routes(app, manager)
    from qumran.daemon.api_networks import add_network_routes

    add_network_routes(app, manager)
    app.openapi = lambda: _contract(app)  # type: ignore[method-assign]
    return app


def _handle_errors(app: FastAPI) -> None:
    @app.exception_handler(QumranError)
    async def _qumran_error(request: Request, exc: QumranError) -> Response:
        return error(exc.code, exc.message, exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error("invalid-argument", f"bad request: {detail}", 400)

    @app.exception_handler(HTTPException)
    async def _routing(request: Request, exc: HTTPException) -> Response:
        method, path = request.method, request.url.path
        if exc.status_code == 404:
            return error("not-found", f"no route {path} (see /openapi.json)", 404)
        if exc.status_code == 405:
            allow = ", ".join(allowed_methods(app, request))
            message = f"{method} is not allowed on {path}; it takes {allow}"
            return error("method-not-allowed", message, 405, {"allow": allow})
        if exc.status_code < 500:  # the framework could not read the body
            return error("invalid-argument", f"bad request: {exc.detail}", 400)
        return _internal_error(request, exc)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        return _internal_error(request, exc)


def _internal_error(request: Request, exc: Exception) -> Response:
    # The text of an unexpected exception may name paths or data of the daemon's: the
    # log has it, the caller gets a fixed message.
    log.error("internal error on %s %s: %r", request.method, request.url.path, exc)
    log.debug("traceback", exc_info=exc)
    return error("internal", "internal error in qumrand (details in its log)", 500)


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """The methods the routes at this path take: the same as the OpenAPI document's."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _routes(app: FastAPI, manager: Manager) -> None:
    @app.get("/v1/host", responses=errors())
    async def host(request: Request) -> HostInfo:
        caller = caller_of(request)
        return {
            "hostname": socketlib.gethostname(),
            "version": __version__,
            "uid": caller.uid,
            "daemon_uid": os.geteuid(),
            "drivers": [_driver(d.host_info()) for d in manager.drivers.values()],
        }

    @app.get("/v1/daemon", responses=errors())
    async def daemon(request: Request) -> DaemonInfo:
        return daemon_info(request.app.state)

    @app.get("/v1/vms", response_model=list[VmInfo], responses=errors())
    async def list_vms(request: Request, all: bool = False) -> Response:
        doms = manager.visible(caller_of(request))
        return _encoded([d.info() for d in doms if all or d.active])

    @app.post("/v1/vms", status_code=201, responses=errors(409), openapi_extra=DEFINITION)
    async def define(request: Request, force: bool = False, uuid: str | None = None) -> VmInfo:
        """``force``: allow more memory than the host has. ``uuid``: the VM's, instead of
        a new one (a libvirt domain XML's, for `qumran define --xml`)."""
        caller = caller_of(request)
        doc = _json(await request.body())
        return (await manager.define(caller, doc, force=force, uuid=uuid)).info()

    @app.get("/v1/vms/{name}", response_model=VmInfo, responses=errors(404))
    async def get_vm(request: Request, name: Name) -> Response:
        return _encoded(manager.get(caller_of(request), name).info())

    @app.delete("/v1/vms/{name}", status_code=204, responses=errors(404, 409))
    async def undefine(request: Request, name: Name) -> Response:
        await manager.undefine(caller_of(request), name)
        return Response(status_code=204)

    @app.put("/v1/vms/{name}/definition", responses=errors(404), openapi_extra=DEFINITION)
    async def redefine(request: Request, name: Name, force: bool = False) -> VmInfo:
        """Replace the definition (``qumran edit``): a shut-off VM takes it at once; a
        running one at its next start (``pending_definition`` until then). The name
        cannot change. ``force``: allow more memory than the host has."""
        caller = caller_of(request)
        doc = _json(await request.body())
        return (await manager.redefine(caller, name, doc, force=force)).info()

    @app.put("/v1/vms/{name}/autostart", responses=errors(404))
    async def autostart(request: Request, name: Name, body: Autostart) -> VmInfo:
        return (await manager.set_autostart(caller_of(request), name, body.enabled)).info()

    for action in ("start", "shutdown", "destroy", "reboot", "reset", "suspend", "resume"):
        _add_action(app, manager, action)

    @app.post("/v1/vms/{name}/save", responses=errors(404, 409, 504))
    async def save(request: Request, name: Name, body: SnapshotFile) -> VmInfo:
        """Snapshot a running native VM to ``file`` (written by qumran-vmm as the VM's
        owner), then end it: shut off, reason ``saved`` (docs/vmm.md)."""
        return (await snapshots.save(manager, caller_of(request), name, body.file)).info()

    @app.post("/v1/restore", responses=errors(404, 409, 504))
    async def restore(request: Request, body: SnapshotFile) -> VmInfo:
        """Start the VM a snapshot ``file`` names (the caller's, shut off) from it; the
        file is opened with the caller's rights (and the owner's)."""
        return (await snapshots.restore_file(manager, caller_of(request), body.file)).info()

    @app.post("/v1/vms/{name}/managedsave", responses=errors(404, 409, 504))
    async def managedsave(request: Request, name: Name) -> VmInfo:
        """Snapshot a running native VM into qumrand's own file for it, then end it; its
        next start resumes from there."""
        return (await snapshots.managed_save(manager, caller_of(request), name)).info()

    @app.delete("/v1/vms/{name}/managedsave", responses=errors(404))
    async def managedsave_remove(request: Request, name: Name) -> VmInfo:
        """Forget the managed save: the next start boots afresh."""
        return (await snapshots.managed_save_remove(manager, caller_of(request), name)).info()

    @app.get("/v1/vms/{name}/stats", responses=errors(404))
    async def stats(request: Request, name: Name) -> Stats:
        dom = manager.get(caller_of(request), name)
        # The sampler's dataclasses as dicts: FastAPI checks them against Sample on the way out.
        samples = cast("list[Sample]", await manager.stats.fresh_samples(dom))
        return {"interval": manager.stats.interval, "samples": samples}

    @app.get("/v1/vms/{name}/interfaces", responses=errors(404))
    async def interfaces(request: Request, name: Name) -> list[InterfaceInfo]:
        return manager.interfaces(caller_of(request), name)

    @app.get("/v1/events", responses=errors())
    async def events(
        request: Request, since: Annotated[int, Query(ge=0, le=MAX_EVENT_ID)] = 0
    ) -> list[Event]:
        caller = caller_of(request)
        everything = caller.uid in (0, os.geteuid())
        history = manager.events.history(since, None if everything else caller.uid)
        return cast("list[Event]", history)  # EventRecords as dicts, checked on the way out

    @app.websocket("/v1/events/stream")
    async def event_stream(websocket: WebSocket) -> None:
        await _event_session(manager, websocket)

    @app.websocket("/v1/vms/{name}/console")
    async def console(websocket: WebSocket, name: str) -> None:
        await _console_session(manager, websocket, name)


# The definition is read and validated by qumran.config.validate (field-path messages);
# the document describes it with the same model's JSON schema.
DEFINITION: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a VM definition (docs/definitions.md)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VmSpec"}}},
    }
}


def _encoded(doc: VmInfo | list[VmInfo]) -> Response:
    """``doc`` as the answer, written straight to JSON. The route's ``response_model``
    still documents it; FastAPI's check of it on the way out is skipped: the documents
    are built by ``Domain.info`` (typed), and checking a 1,000-VM list took longer than
    building it."""
    return Response(to_json(doc), media_type="application/json")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise InvalidArgument(f"the body is not a JSON document: {exc.msg} at {where}") from None
    except ValueError:  # a number past Python's int conversion limit (4300 digits)
        raise InvalidArgument("the body has a number too long to read") from None
    except RecursionError:
        raise InvalidArgument("the body is nested too deeply") from None


def _driver(info: DriverHostInfo) -> DriverInfo:
    return {
        "driver": info.driver,
        "accelerator": info.accelerator,
        "reason": info.reason,
        "version": info.version,
        "available": info.available,
    }


def _add_action(app: FastAPI, manager: Manager, action: str) -> None:
    async def handler(request: Request, name: Name) -> VmInfo:
        dom = await getattr(manager, action)(caller_of(request), name)
        info: VmInfo = dom.info()
        return info

    handler.__name__ = action
    app.post(
        f"/v1/vms/{{name}}/{action}",
        name=action,
        summary=f"{action} a VM",
        responses=errors(404, 409, 504),
    )(handler)


def _contract(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with VmSpec's schema and without the 422 we never answer."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        spec = VmSpec.model_json_schema(ref_template=REF)
        schemas.update(spec.pop("$defs", {}))
        schemas["VmSpec"] = spec
        error_body = TypeAdapter(ErrorBody).json_schema(ref_template=REF)
        schemas.update(error_body.pop("$defs", {}))
        schemas["ErrorBody"] = error_body
        from qumran.config.network import NetworkSpec

        net = NetworkSpec.model_json_schema(ref_template=REF)
        schemas.update(net.pop("$defs", {}))
        schemas["NetworkSpec"] = net
        for operations in doc["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)  # our validation errors are 400s
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = doc
    return app.openapi_schema


async def _event_session(manager: Manager, websocket: WebSocket) -> None:
    try:
        caller = caller_of(websocket)
    except QumranError as exc:
        await streams.deny(websocket, exc)
        return
    await streams.event_stream(manager.events, websocket, caller.uid)


async def _console_session(manager: Manager, websocket: WebSocket, name: str) -> None:
    try:
        history = streams.History.parse(websocket.query_params.get("history"))
        dom = manager.get(caller_of(websocket), name)
        if dom.run is None:
            raise InvalidState(f"VM {name!r} is not running; start it first")
    except QumranError as exc:
        await streams.deny(websocket, exc)
        return
    await streams.console_stream(dom.run.console, websocket, history)
