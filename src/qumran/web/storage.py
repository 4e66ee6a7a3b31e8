"""The Storage page: the session user's pools and volumes, and what can be done to them.

Every call goes through ``manager.storage`` (docs/storage.md) as the session's user, so
who sees and touches what is the daemon's rule, not this page's: a user sees their own
pools, root everyone's (with the owner shown; an action on another user's pool names it
with ``owner=``). A refusal is shown on the page as the daemon words it, and changes
nothing. The forms post plainly (no script needed); confirm.js only asks before a delete.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from qumran.client.schema import PoolInfo, VolumeInfo
from qumran.config.units import parse_size
from qumran.daemon.manager import Caller, Manager
from qumran.errors import InvalidArgument, QumranError
from qumran.web import images
from qumran.web.auth import Session
from qumran.web.guard import acting, caller, current
from qumran.web.render import page

User = Annotated[Session, Depends(current)]
Actor = Annotated[Session, Depends(acting)]
FIELDS = ("pool", "name", "size", "format", "backing", "new", "path")
BACK = "/storage"


async def pools_of(manager: Manager, who: Caller) -> list[dict[str, Any]]:
    """Each pool the caller sees, with its volumes (none if the pool cannot be read)."""
    found = []
    for pool in await manager.storage.pools(who):
        vols: list[VolumeInfo] = []
        problem = pool["problem"]
        if pool["usable"]:
            try:
                vols = await manager.storage.volumes(who, pool["name"], owner=pool["owner"])
            except QumranError as exc:
                problem = exc.message
        shown = [v | {"shown_backing": _backing(v, pool)} for v in vols]
        found.append({"info": pool, "key": key(pool), "problem": problem, "volumes": shown})
    return found


async def own_volumes(manager: Manager, who: Caller) -> list[VolumeInfo]:
    """The caller's own volumes in all their pools (the Create form's disk picker)."""
    found: list[VolumeInfo] = []
    for pool in await manager.storage.pools(who):
        if pool["owner"] != who.uid or not pool["usable"]:
            continue
        try:
            found += await manager.storage.volumes(who, pool["name"])
        except QumranError:
            continue  # unreadable now: the Storage page says why
    return found


def key(pool: PoolInfo) -> str:
    """How a form names a pool: ``OWNER/NAME`` (pool names have no '/')."""
    return f"{pool['owner']}/{pool['name']}"


def _backing(vol: VolumeInfo, pool: PoolInfo) -> str:
    """An overlay's backing file as a person knows it: a volume, an image, or the path."""
    backing = vol["backing"]
    if not backing:
        return ""
    path = Path(backing)
    if str(path.parent) == pool["path"]:
        return f"volume {path.name}"
    cache = images.images_dir(pool["owner"])
    if cache is not None and path.parent.parent == cache:
        return f"image {path.parent.name}"
    return backing


def _size(text: str, what: str) -> int:
    try:
        return parse_size(text.strip(), "M")  # as `qumran vol-create`: a bare number is MiB
    except ValueError as exc:
        raise InvalidArgument(f"{what}: {exc}") from None


def _pool_field(text: str) -> tuple[int, str]:
    owner, _, name = text.partition("/")
    if not name:
        raise InvalidArgument(f"pool: {text!r} is not one of the pools listed; reload the page")
    return _owner(owner), name


def _owner(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise InvalidArgument(f"owner: {text!r} is not a uid; reload the Storage page")
    return int(text)


def routes(manager: Manager) -> APIRouter:
    r = APIRouter()

    async def show(request: Request, session: Session, status: int = 200,
                   error: str | None = None,
                   form: dict[str, str] | None = None) -> Response:  # fmt: skip
        pools = await pools_of(manager, caller(session))
        found = await asyncio.to_thread(images.user_images, session.uid, session.gid)
        others = any(p["info"]["owner"] != session.uid for p in pools)
        return page(request, "storage.html", session, status, pools=pools, error=error,
                    images=images.disk_images(found), form=form or {},
                    show_owner=session.uid == 0 or others)  # fmt: skip

    async def fields(request: Request) -> dict[str, str]:
        raw = await request.form()
        return {k: v.strip() for k in FIELDS if isinstance(v := raw.get(k, ""), str)}

    async def attempt(request: Request, session: Session, work: Any,
                      form: dict[str, str] | None = None) -> Response:  # fmt: skip
        """Run ``work``; on a refusal, the page again with the daemon's words."""
        try:
            await work
        except QumranError as exc:
            return await show(request, session, exc.http_status, exc.message, form)
        return RedirectResponse(BACK, status_code=303)

    @r.get("/storage")
    async def storage(request: Request, session: User) -> Response:
        return await show(request, session)

    @r.post("/storage/pools")
    async def define_pool(request: Request, session: Actor) -> Response:
        form = await fields(request)
        work = manager.storage.define_pool(caller(session), form.get("name", ""),
                                           form.get("path", ""))  # fmt: skip
        return await attempt(request, session, work, form | {"open": "pool"})

    @r.post("/storage/pools/{owner}/{pool}/undefine")
    async def undefine_pool(request: Request, owner: str, pool: str, session: Actor) -> Response:
        async def work() -> None:
            await manager.storage.undefine_pool(caller(session), pool, owner=_owner(owner))

        return await attempt(request, session, work())

    @r.post("/storage/volumes")
    async def create_volume(request: Request, session: Actor) -> Response:
        form = await fields(request)

        async def work() -> None:
            owner, pool = _pool_field(form.get("pool", ""))
            size = _size(form.get("size", ""), "size")
            await manager.storage.create_volume(
                caller(session), form.get("name", ""), size, pool=pool,
                format=form.get("format") or "qcow2", backing=form.get("backing") or None,
                owner=owner,
            )  # fmt: skip

        return await attempt(request, session, work(), form)

    @r.post("/storage/volumes/{owner}/{pool}/{name}/{action}")
    async def volume_action(request: Request, owner: str, pool: str, name: str, action: str,
                            session: Actor) -> Response:  # fmt: skip
        form = await fields(request)
        who = caller(session)

        async def work() -> None:
            uid = _owner(owner)
            if action == "clone":
                await manager.storage.clone_volume(who, name, form.get("new", ""), pool=pool,
                                                   owner=uid)  # fmt: skip
            elif action == "resize":
                await manager.storage.resize_volume(who, name, _size(form.get("size", ""), "size"),
                                                    pool=pool, owner=uid)  # fmt: skip
            elif action == "delete":
                await manager.storage.delete_volume(who, name, pool=pool, owner=uid)
            else:
                raise InvalidArgument(f"unknown action {action!r}; one of: clone, resize, delete")

        return await attempt(request, session, work())

    return r
