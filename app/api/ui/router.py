"""A small web UI served by the app: `/ui` (ask with streaming, citations, thumbs up/down with a comment
or a corrected answer) and `/ui/review` (answers with negative feedback: the question, the retrieved
chunks and the answer; write the correction and mark it for the regression set; download the set).

One static page (no build chain), rendered with the app's mount point; it holds no data. Everything it
shows comes from the API with the caller's key (asked for once when auth is on, kept in the browser's
localStorage), so it sees exactly what that key may see.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment
from markupsafe import Markup

router = APIRouter(tags=["ui"], include_in_schema=False)

_PAGE = Path(__file__).with_name("page.html")
# The page sends the key only to this origin; no inline content from elsewhere may run.
_CSP = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:"


@cache
def _template():  # type: ignore[no-untyped-def]
    return Environment(autoescape=True).from_string(_PAGE.read_text(encoding="utf-8"))


def _render(request: Request, page: str, title: str) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    # The mount point as a JS string literal ("<" escaped: it cannot close the script element).
    root_json = Markup(json.dumps(root).replace("<", "\\u003c"))
    html = _template().render(page=page, title=title, root=root, root_json=root_json)
    return HTMLResponse(html, headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-store"})


@router.get("/ui")
async def ui(request: Request) -> HTMLResponse:
    return _render(request, "ask", "ask")


@router.get("/ui/review")
async def ui_review(request: Request) -> HTMLResponse:
    return _render(request, "review", "review")
