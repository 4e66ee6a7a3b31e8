"""The network routes of the API (docs/api.md, docs/networks.md).

Thin: each route calls one method of ``manager.networks``
(:class:`qumran.daemon.network.Networks`). A definition is the body as JSON, validated
by the daemon (the same document `qumran net-define` reads from YAML or TOML), so its
errors name the field as they do for VMs.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.responses import Response

from qumran.client.schema import LeaseInfo, NetworkInfo
from qumran.daemon.api import Autostart, _json, caller_of, errors
from qumran.daemon.manager import Manager

Network = Annotated[str, Path(description="the network's name", examples=["default"])]

DEFINITION: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a network definition (docs/networks.md)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NetworkSpec"}}},
    }
}


def add_network_routes(app: FastAPI, manager: Manager) -> None:
    base = "/v1/networks/{network}"

    @app.get("/v1/networks", responses=errors())
    async def list_networks(request: Request) -> list[NetworkInfo]:
        """Root sees every network; a user, the shared ones."""
        return await manager.networks.list(caller_of(request))

    @app.post("/v1/networks", status_code=201, responses=errors(409),
              openapi_extra=DEFINITION)  # fmt: skip
    async def define_network(request: Request) -> NetworkInfo:
        """Root only. Refused: a subnet another network or the host uses, a bridge name
        that is another interface's; a per-user qumrand takes `user` networks only."""
        caller = caller_of(request)
        return await manager.networks.define(caller, _json(await request.body()))

    @app.get(base, responses=errors(404))
    async def get_network(request: Request, network: Network) -> NetworkInfo:
        return await manager.networks.info(caller_of(request), network)

    @app.delete(base, status_code=204, responses=errors(404, 409))
    async def undefine_network(request: Request, network: Network, force: bool = False
                               ) -> Response:  # fmt: skip
        """Refused while the network is active, and while defined VMs have a NIC on it
        (naming them) unless ``force``."""
        await manager.networks.undefine(caller_of(request), network, force=force)
        return Response(status_code=204)

    @app.post(base + "/start", responses=errors(404, 409))
    async def start_network(request: Request, network: Network) -> NetworkInfo:
        """Make its bridge, firewall rules and dnsmasq; on a failure, none is left."""
        return await manager.networks.start(caller_of(request), network)

    @app.post(base + "/destroy", responses=errors(404, 409))
    async def destroy_network(request: Request, network: Network, force: bool = False
                              ) -> NetworkInfo:  # fmt: skip
        """Stop it; refused while VMs are attached, unless ``force``."""
        return await manager.networks.destroy(caller_of(request), network, force=force)

    @app.put(base + "/autostart", responses=errors(404))
    async def network_autostart(request: Request, network: Network, body: Autostart
                                ) -> NetworkInfo:  # fmt: skip
        return await manager.networks.set_autostart(caller_of(request), network, body.enabled)

    @app.get(base + "/leases", responses=errors(404))
    async def network_leases(request: Request, network: Network) -> list[LeaseInfo]:
        """DHCP leases (a user sees those of their own VMs)."""
        return await manager.networks.leases(caller_of(request), network)
