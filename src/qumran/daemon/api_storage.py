"""The storage routes of the API: pools and their volumes (docs/api.md, docs/storage.md).

Thin: each route reads its request model and calls one method of ``manager.storage``
(:class:`qumran.daemon.storage.Storage`), which the web manager calls too. Sizes are
bytes here; the CLI reads ``8G`` and sends bytes. ``owner`` lets root (or the user of a
per-user qumrand) name another user's pool by uid; for anyone else it is refused.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from qumran.client.schema import PoolInfo, VolumeInfo
from qumran.daemon.api import caller_of, errors
from qumran.daemon.manager import Manager

PoolName = Annotated[str, Path(description="the pool's name", examples=["default"])]
Name = Annotated[str, Path(description="the volume's name (its file name)", examples=["web1"])]
Owner = Annotated[
    int | None,
    Query(ge=0, le=2**32 - 2, description="root only: the uid whose pool this is (default: yours)"),
]
Size = Annotated[int, Field(ge=1, le=2**63 - 1, description="bytes (a multiple of 512)")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PoolDefinition(Body):
    name: str = Field(description="unique among your pools", examples=["fast"])
    path: str = Field(description="an absolute directory of yours", examples=["/srv/vms"])


class VolumeCreation(Body):
    name: str = Field(examples=["web1"])
    size: Size
    format: Literal["qcow2", "raw"] = "qcow2"
    backing: str | None = Field(
        default=None,
        description="a volume of the same pool, an image of your cache, or an absolute path"
        " of yours: the new qcow2 is an overlay on it",
    )


class VolumeClone(Body):
    new: str = Field(description="the copy's name", examples=["web2"])


class VolumeResize(Body):
    size: Size


class VolumeImport(Body):
    file: str = Field(description="an absolute path to a qcow2 or raw image of yours")


def add_storage_routes(app: FastAPI, manager: Manager) -> None:
    _pool_routes(app, manager)
    _volume_routes(app, manager)


def _pool_routes(app: FastAPI, manager: Manager) -> None:
    @app.get("/v1/pools", responses=errors())
    async def list_pools(request: Request) -> list[PoolInfo]:
        """Your pools (root: everyone's); your ``default`` pool is made on first use."""
        return await manager.storage.pools(caller_of(request))

    @app.post("/v1/pools", status_code=201, responses=errors(409))
    async def define_pool(request: Request, body: PoolDefinition) -> PoolInfo:
        return await manager.storage.define_pool(caller_of(request), body.name, body.path)

    @app.get("/v1/pools/{pool}", responses=errors(404, 409))
    async def get_pool(request: Request, pool: PoolName, owner: Owner = None) -> PoolInfo:
        return await manager.storage.pool_info(caller_of(request), pool, owner=owner)

    @app.delete("/v1/pools/{pool}", status_code=204, responses=errors(404, 409))
    async def undefine_pool(request: Request, pool: PoolName, owner: Owner = None) -> Response:
        """Forget the pool; its directory and files stay where they are."""
        await manager.storage.undefine_pool(caller_of(request), pool, owner=owner)
        return Response(status_code=204)


def _volume_routes(app: FastAPI, manager: Manager) -> None:
    base = "/v1/pools/{pool}/volumes"

    @app.get(base, responses=errors(404, 409))
    async def list_volumes(request: Request, pool: PoolName, owner: Owner = None
                           ) -> list[VolumeInfo]:  # fmt: skip
        return await manager.storage.volumes(caller_of(request), pool, owner=owner)

    @app.post(base, status_code=201, responses=errors(404, 409))
    async def create_volume(
        request: Request, pool: PoolName, body: VolumeCreation, owner: Owner = None
    ) -> VolumeInfo:
        return await manager.storage.create_volume(
            caller_of(request), body.name, body.size, pool=pool, format=body.format,
            backing=body.backing, owner=owner,
        )  # fmt: skip

    @app.get(base + "/{name}", responses=errors(404, 409))
    async def get_volume(request: Request, pool: PoolName, name: Name, owner: Owner = None
                         ) -> VolumeInfo:  # fmt: skip
        return await manager.storage.volume(caller_of(request), name, pool, owner=owner)

    @app.delete(base + "/{name}", status_code=204, responses=errors(404, 409))
    async def delete_volume(request: Request, pool: PoolName, name: Name, owner: Owner = None
                            ) -> Response:  # fmt: skip
        """Refused while a defined VM uses it, or another volume is an overlay on it."""
        await manager.storage.delete_volume(caller_of(request), name, pool=pool, owner=owner)
        return Response(status_code=204)

    @app.post(base + "/{name}/clone", status_code=201, responses=errors(404, 409))
    async def clone_volume(
        request: Request, pool: PoolName, name: Name, body: VolumeClone, owner: Owner = None
    ) -> VolumeInfo:
        """A copy of the volume ``name`` in the same pool, named ``new``."""
        return await manager.storage.clone_volume(caller_of(request), name, body.new, pool=pool,
                                                  owner=owner)  # fmt: skip

    @app.post(base + "/{name}/resize", responses=errors(404, 409))
    async def resize_volume(
        request: Request, pool: PoolName, name: Name, body: VolumeResize, owner: Owner = None
    ) -> VolumeInfo:
        """Grow the volume to ``size`` bytes (never shrink)."""
        return await manager.storage.resize_volume(caller_of(request), name, body.size,
                                                   pool=pool, owner=owner)  # fmt: skip

    @app.post(base + "/{name}/import", status_code=201, responses=errors(404, 409))
    async def import_volume(
        request: Request, pool: PoolName, name: Name, body: VolumeImport, owner: Owner = None
    ) -> VolumeInfo:
        """A new volume ``name``: a copy of the image file ``file`` (read, never written)."""
        return await manager.storage.import_volume(caller_of(request), name, body.file,
                                                   pool=pool, owner=owner)  # fmt: skip
