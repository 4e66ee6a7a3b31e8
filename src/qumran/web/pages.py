"""Pages and the small JSON calls their scripts make. Every call acts as the session's user."""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from qumran.daemon.domain import Domain
from qumran.daemon.manager import Manager
from qumran.errors import InvalidArgument, InvalidState, QumranError
from qumran.web import definition, fromimage, images, storage
from qumran.web.auth import COOKIE, Session
from qumran.web.forms import DEFAULTS, FIELDS, definition_from_form
from qumran.web.guard import acting, auth_of, caller, current
from qumran.web.lifecycle import duration, mebibytes
from qumran.web.render import page

User = Annotated[Session, Depends(current)]  # any page or read: a logged-in session
Actor = Annotated[Session, Depends(acting)]  # a change: the session and its CSRF token
ACTIONS = ("start", "shutdown", "destroy", "reboot", "reset", "suspend", "resume")


def vm_summary(manager: Manager, dom: Domain) -> dict[str, Any]:
    info = dom.info()
    samples = manager.stats.samples(dom)[-30:] if dom.run is not None else []
    interfaces = manager.interfaces_of(dom)
    return {
        "name": info["name"], "state": info["state"], "reason": info["reason"],
        "vcpus": info["vcpus"], "memory_mib": info["memory_mib"], "owner": info["owner"],
        "hypervisor": info["hypervisor"], "pid": info["pid"],
        "graphics": bool(dom.spec.graphics), "serial": bool(dom.spec.serial),
        "cpu": [s["cpu_percent"] for s in samples],
        "memory": mebibytes(info["memory_mib"]),
        "uptime": duration(info["uptime"]) if info["uptime"] is not None else "",
        "disks": len(dom.spec.disks), "nics": len(dom.spec.nics),
        "ssh_port": fromimage.ssh_forward(dom.spec.nics),
        # Each NIC's leased address on its network (none for user-mode NICs).
        "addresses": [f"{i['ip']} ({i['network']})" for i in interfaces if i["ip"]],
        "interfaces": interfaces, "network": network_summary(dom),
    }  # fmt: skip


def network_summary(dom: Domain) -> str:
    kinds = sorted({"user-mode" if nic.network is None else f"network {nic.network}"
                    for nic in dom.spec.nics})  # fmt: skip
    if not kinds:
        return "no network"
    return ", ".join(kinds)


def routes(manager: Manager) -> APIRouter:
    r = APIRouter()

    @r.get("/login")
    async def login(request: Request, token: str = "") -> Response:
        redeemed = auth_of(request).redeem(token) if token else None
        if redeemed is None:
            message = (
                "This login link is not valid: it was already used, it expired (links last "
                "5 minutes), or it is mistyped."
                if token
                else "You are not logged in."
            )
            return page(request, "login.html", None, 403 if token else 401, message=message)
        sid, _ = redeemed
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, sid, httponly=True, secure=True, samesite="strict", path="/")
        return response

    @r.post("/logout")
    async def logout(request: Request, session: Actor) -> Response:
        auth_of(request).logout(request.cookies.get(COOKIE, ""))
        response = page(request, "login.html", None, message="You are logged out.")
        response.delete_cookie(COOKIE, path="/")
        return response

    @r.get("/")
    async def index(request: Request, session: User) -> Response:
        vms = [vm_summary(manager, d) for d in _visible(manager, session)]
        return page(request, "list.html", session, vms=vms, actions=ACTIONS)

    @r.get("/api/vms")
    async def api_vms(session: User) -> list[dict[str, Any]]:
        return [vm_summary(manager, d) for d in _visible(manager, session)]

    @r.get("/vms/new")
    async def new(request: Request, session: User) -> Response:
        found = await _images(session)
        kernels = images.kernel_images(found)
        key = await asyncio.to_thread(fromimage.public_key, session.uid, session.gid)
        form = {**DEFAULTS, **fromimage.defaults(found, key),
                "boot": "image" if kernels else "kernel",
                "mode": "image" if images.disk_images(found) else "custom"}  # fmt: skip
        if form["mode"] == "image":
            form["memory"] = fromimage.MEMORY
        if kernels:
            form |= {"image": kernels[0].name,
                     "cmdline": kernels[0].cmdline or DEFAULTS["cmdline"]}  # fmt: skip
        return await create_page(request, manager, session, 200, form, None, found)

    @r.post("/vms")
    async def create(request: Request, session: Actor) -> Response:
        raw = await request.form()
        names = FIELDS + fromimage.FIELDS
        form = {k: v for k in names if isinstance(v := raw.get(k, ""), str)}
        found = await _images(session)
        who = caller(session)
        try:
            if form.get("mode") == "image":
                dom = await fromimage.create(manager, who, form, found)
            else:
                dom = await manager.define(who, definition_from_form(form, found))
        except QumranError as exc:
            return await create_page(request, manager, session, exc.http_status, form,
                                     exc.message, found)  # fmt: skip
        if form.get("mode") == "image" and form.get("start") == "on":
            try:
                await manager.start(who, dom.name)
            except QumranError as exc:  # defined, kept to look at (as `qumran create` does)
                return details_page(request, manager, session, dom, start_error=exc.message)
        return RedirectResponse(f"/vms/{dom.name}", status_code=303)

    @r.get("/vms/{name}")
    async def details(request: Request, name: str, session: User) -> Response:
        dom = manager.get(caller(session), name)
        return details_page(request, manager, session, dom,
                            saved=request.query_params.get("saved") == "1")  # fmt: skip

    @r.get("/vms/{name}/edit")
    async def edit(request: Request, name: str, session: User) -> Response:
        dom = manager.get(caller(session), name)
        text = definition.to_yaml(dom.record.definition)
        return edit_page(request, session, 200, vm_summary(manager, dom), text, [])

    @r.post("/vms/{name}/edit")
    async def save(request: Request, name: str, session: Actor) -> Response:
        dom = manager.get(caller(session), name)
        raw = (await request.form()).get("definition", "")
        text = raw if isinstance(raw, str) else ""
        try:
            doc = definition.parse(text)
            await manager.redefine(caller(session), name, doc)
        except QumranError as exc:
            found = definition.problems(exc.message, text)
            return edit_page(request, session, exc.http_status, vm_summary(manager, dom), text,
                             found)  # fmt: skip
        return RedirectResponse(f"/vms/{name}?saved=1", status_code=303)

    @r.get("/api/vms/{name}/stats")
    async def stats(name: str, session: User) -> dict[str, Any]:
        dom = manager.get(caller(session), name)
        # This run's samples only: an earlier run's would join it across the shut-off gap.
        run = dom.run
        samples = [s for s in manager.stats.samples(dom) if run and s["t"] >= run.started_at]
        return {"interval": manager.stats.interval, "samples": samples}

    @r.post("/vms/{name}/{action}")
    async def act(request: Request, name: str, action: str, session: Actor) -> Response:
        if action == "undefine":
            await manager.undefine(caller(session), name)
            return _done(request, None, "/")
        if action not in ACTIONS:
            raise InvalidArgument(f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")
        dom = await getattr(manager, action)(caller(session), name)
        return _done(request, vm_summary(manager, dom), f"/vms/{name}")

    @r.get("/vms/{name}/console")
    async def console(request: Request, name: str, session: User) -> Response:
        dom = manager.get(caller(session), name)
        if not dom.spec.serial:
            raise InvalidState(f"VM {name!r} has no serial console (serial: false)")
        return page(request, "console.html", session, vm=vm_summary(manager, dom))

    @r.get("/vms/{name}/display")
    async def display(request: Request, name: str, session: User) -> Response:
        dom = manager.get(caller(session), name)
        if not dom.spec.graphics or dom.spec.hypervisor != "qemu":
            raise InvalidState(f"VM {name!r} has no display (graphics: true, QEMU driver only)")
        return page(request, "display.html", session, vm=vm_summary(manager, dom))

    return r


async def create_page(request: Request, manager: Manager, session: Session, status: int,
                      form: dict[str, str], error: str | None,
                      found: list[images.Image]) -> HTMLResponse:  # fmt: skip
    where = images.images_dir(session.uid)
    volumes = await storage.own_volumes(manager, caller(session))
    return page(request, "create.html", session, status, form=form, error=error,
                images=images.kernel_images(found), disk_images=images.disk_images(found),
                volumes=volumes, images_dir=str(where) if where else None)  # fmt: skip


def details_page(request: Request, manager: Manager, session: Session, dom: Domain, *,
                 saved: bool = False, start_error: str | None = None) -> HTMLResponse:  # fmt: skip
    return page(request, "vm.html", session, vm=vm_summary(manager, dom), info=dom.info(),
                events=recent_events(manager, dom), actions=ACTIONS, saved=saved,
                definition_yaml=definition.to_yaml(dom.record.definition),
                disks=[_disk(d) for d in dom.spec.disks], start_error=start_error)  # fmt: skip


def _disk(disk: Any) -> dict[str, Any]:
    """A disk as the VM page lists it: a volume (linked to the Storage page) or a path."""
    if disk.volume is not None:
        return {"volume": disk.volume, "pool": disk.pool, "readonly": disk.readonly}
    return {"path": str(disk.path), "format": disk.format, "readonly": disk.readonly}


def edit_page(request: Request, session: Session, status: int, vm: dict[str, Any], text: str,
              found: list[definition.Problem]) -> HTMLResponse:  # fmt: skip
    lines = sorted({p.line for p in found if p.line is not None})
    return page(request, "edit.html", session, status, vm=vm, text=text, problems=found,
                error_lines=lines)  # fmt: skip


async def _images(session: Session) -> list[images.Image]:
    # A hand-off to the credentials thread, off the event loop: a slow home directory
    # (NFS) delays this page only.
    return await asyncio.to_thread(images.user_images, session.uid, session.gid)


def _visible(manager: Manager, session: Session) -> list[Domain]:
    return sorted(manager.visible(caller(session)), key=lambda d: _natural(d.name))


def _natural(name: str) -> list[tuple[int, int | str]]:
    """vm2 before vm10: digit runs compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]


def _done(request: Request, result: dict[str, Any] | None, back: str) -> Response:
    if wants_json(request):
        return JSONResponse({"vm": result})
    return RedirectResponse(back, status_code=303)


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get(
        "accept", ""
    )


def recent_events(manager: Manager, dom: Domain, keep: int = 50) -> list[dict[str, Any]]:
    """The VM's latest events, newest first (the store pages oldest first, 1000 at a time)."""
    found: deque[dict[str, Any]] = deque(maxlen=keep)
    since = 0
    while True:
        batch = manager.store.events(since, dom.owner)
        found.extend(asdict(e) for e in batch if e.uuid == dom.uuid)
        if len(batch) < 1000:
            return list(reversed(found))
        since = batch[-1].id
