"""Pages from templates: every page gets the session and its CSRF token."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from qumran.config.units import format_size
from qumran.web import lifecycle
from qumran.web.auth import Session

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.globals |= {"action_table": lifecycle.action_table(), "lifecycle": lifecycle}
templates.env.filters["date"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
templates.env.filters["size"] = lifecycle.size
templates.env.filters["exact_size"] = format_size  # what a size field shows: 8G


def page(request: Request, name: str, session: Session | None, status: int = 200,
         **context: Any) -> HTMLResponse:  # fmt: skip
    context |= {"session": session, "csrf": session.csrf if session else ""}
    return templates.TemplateResponse(request, name, context, status_code=status)
