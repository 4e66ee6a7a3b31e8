"""The one web-manager route on qumrand's UNIX socket: a login token for the caller."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from qumran.daemon.api import caller_of
from qumran.web.auth import WebAuth


class LoginToken(BaseModel):
    token: str
    url: str


def token_router(auth: WebAuth) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/web/token", summary="a one-time login URL for the web manager")
    async def web_token(request: Request) -> LoginToken:
        # The uid is the socket peer's, as the kernel reports it: the token can only
        # log a person in as themselves.
        caller = caller_of(request)
        token = auth.issue_token(caller.uid, caller.gid)
        return LoginToken(token=token, url=auth.login_url(token))

    return router
