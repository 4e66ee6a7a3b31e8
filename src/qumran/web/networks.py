"""The Networks page: the virtual networks the session user sees, their DHCP leases, and
(for root) defining, starting, stopping and removing them.

Every call goes through ``manager.networks`` (docs/networks.md) as the session's user:
root sees every network and manages them; another user sees the shared ones and the
leases of their own VMs, and is refused the rest in the daemon's words. A definition is
typed as YAML, read by the same safe loader as ``qumran net-define``. Forms post plainly;
confirm.js asks before stopping or removing a network.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from qumran.config.files import parse_definition
from qumran.daemon.manager import Manager
from qumran.errors import InvalidArgument, QumranError
from qumran.web.auth import Session
from qumran.web.guard import acting, caller, current
from qumran.web.render import page

User = Annotated[Session, Depends(current)]
Actor = Annotated[Session, Depends(acting)]
BACK = "/networks"
MAX_TEXT = 64 << 10
EXAMPLE = """\
name: lab
type: nat
ipv4:
  address: 192.168.150.1/24
  dhcp: {start: 192.168.150.10, end: 192.168.150.200}
shared: true
autostart: true
"""


def routes(manager: Manager) -> APIRouter:
    r = APIRouter()
    nets = manager.networks

    async def show(request: Request, session: Session, status: int = 200,
                   error: str | None = None, text: str = "") -> Response:  # fmt: skip
        who = caller(session)
        found: list[dict[str, Any]] = []
        for net in await nets.list(who):
            try:
                leases = await nets.leases(who, net["name"])
            except QumranError:
                leases = []
            found.append({"info": net, "leases": leases})
        admin = session.uid in (0, manager.networks.admin_uid)
        return page(request, "networks.html", session, status, networks=found, error=error,
                    admin=admin, text=text or EXAMPLE)  # fmt: skip

    async def attempt(request: Request, session: Session, work: Any, text: str = "") -> Response:
        """Run ``work``; on a refusal, the page again with the daemon's words."""
        try:
            await work
        except QumranError as exc:
            return await show(request, session, exc.http_status, exc.message, text)
        return RedirectResponse(BACK, status_code=303)

    @r.get("/networks")
    async def networks(request: Request, session: User) -> Response:
        return await show(request, session)

    @r.post("/networks")
    async def define(request: Request, session: Actor) -> Response:
        raw = (await request.form()).get("definition", "")
        text = raw if isinstance(raw, str) else ""

        async def work() -> None:
            if len(text.encode()) > MAX_TEXT:
                raise InvalidArgument(f"definition: longer than {MAX_TEXT >> 10} KiB")
            doc = parse_definition(text, source="definition")
            await nets.define(caller(session), doc)

        return await attempt(request, session, work(), text)

    @r.post("/networks/{name}/{action}")
    async def action(request: Request, name: str, action: str, session: Actor) -> Response:
        who = caller(session)

        async def work() -> None:
            if action == "start":
                await nets.start(who, name)
            elif action == "stop":
                await nets.destroy(who, name)
            elif action in ("autostart", "no-autostart"):
                await nets.set_autostart(who, name, action == "autostart")
            elif action == "undefine":
                await nets.undefine(who, name)
            else:
                raise InvalidArgument(
                    f"unknown action {action!r}; one of: start, stop, autostart, "
                    "no-autostart, undefine"
                )

        return await attempt(request, session, work())

    return r
