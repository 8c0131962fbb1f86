"""A small web UI served by the app: `/ui` (ask with streaming, citations, thumbs up/down with a comment
or a corrected answer) and `/ui/review` (answers with negative feedback: the question, the retrieved
chunks and the answer; write the correction and mark it for the regression set; download the set).

One static page (no build chain), rendered with the app's mount point, and its script and stylesheet
(`/ui/assets/ui.js`, `/ui/assets/ui.css`); it holds no data. Everything it shows comes from the API with
the caller's key (asked for once when auth is on, kept in the browser's localStorage), so it sees
exactly what that key may see.

The key sits in the page's storage, so every UI response carries a strict CSP (scripts and styles from
this origin only: an injected inline script cannot run and read it), refuses to be framed, and sends no
referrer.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment

router = APIRouter(tags=["ui"], include_in_schema=False)

_HERE = Path(__file__).parent
ASSETS_PATH = "/ui/assets"
# Two fixed routes rather than one `{name}` route: app.api.guards.PUBLIC_PATHS lists each path it serves.
SCRIPT_PATH = f"{ASSETS_PATH}/ui.js"
STYLE_PATH = f"{ASSETS_PATH}/ui.css"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    # frame-ancestors' equivalent for browsers that predate it.
    "X-Frame-Options": "DENY",
    # The assets are only ever what their Content-Type says (no sniffing a response into a script).
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@cache
def _template():  # type: ignore[no-untyped-def]
    return Environment(autoescape=True).from_string((_HERE / "page.html").read_text(encoding="utf-8"))


@cache
def _asset(name: str) -> bytes:
    return (_HERE / name).read_bytes()


def _render(request: Request, page: str, title: str) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    # The script reads the mount point and page name from <body>'s data- attributes (autoescaped).
    html = _template().render(page=page, title=title, root=root)
    return HTMLResponse(html, headers=SECURITY_HEADERS | {"Cache-Control": "no-store"})


def _serve_asset(name: str, media_type: str) -> Response:
    # no-cache: fetched again on every load, so a new release's script never runs against an old page.
    headers = SECURITY_HEADERS | {"Cache-Control": "no-cache"}
    return Response(_asset(name), media_type=media_type, headers=headers)


@router.get("/ui")
async def ui(request: Request) -> HTMLResponse:
    return _render(request, "ask", "ask")


@router.get("/ui/review")
async def ui_review(request: Request) -> HTMLResponse:
    return _render(request, "review", "review")


@router.get(SCRIPT_PATH)
async def ui_script() -> Response:
    return _serve_asset("ui.js", "text/javascript; charset=utf-8")


@router.get(STYLE_PATH)
async def ui_style() -> Response:
    return _serve_asset("ui.css", "text/css; charset=utf-8")
