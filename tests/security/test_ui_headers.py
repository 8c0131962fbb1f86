"""The web UI under a strict CSP: every UI response (the two pages, the script, the stylesheet) refuses
inline code, framing, sniffing and referrers; the pages hold no inline script, no <style>, no `on...=`
or `style=` attribute; the assets are public (auth on, no key) with their content types; the mount point
reaches the script as an escaped attribute. The script running under that CSP in a real browser is
tests/e2e/test_ui_browser.py."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

pytestmark = pytest.mark.unit

PAGES = ["/ui", "/ui/review"]
ASSETS = {"/ui/assets/ui.js": "text/javascript", "/ui/assets/ui.css": "text/css"}
EXPECTED_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "frame-ancestors": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "object-src": ["'none'"],
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The real app with auth on. The lifespan is not entered: the UI needs no container, so no model
    loads (create_app still refuses routes neither guarded nor in PUBLIC_PATHS)."""
    from app.factory import create_app
    from app.settings import Settings

    data_dir = tmp_path_factory.mktemp("ui-headers") / "data"
    return create_app(Settings(_env_file=None, data_dir=data_dir, auth={"mode": "api_key"}))  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def client(app: FastAPI) -> TestClient:
    return TestClient(app)  # not entered: entering would run the lifespan


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


class PageScan(HTMLParser):
    """What CSP would block or that brings code into the page: scripts (with src or a body), <style>
    elements, event handler and style attributes, javascript: URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.script_bodies: list[str] = []
        self.styles = 0
        self.inline_attributes: list[str] = []
        self.stylesheets: list[str | None] = []
        self.body: dict[str, str | None] = {}
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            self.scripts.append(attributes)
            self._in_script = True
        elif tag == "style":
            self.styles += 1
        elif tag == "link" and attributes.get("rel") == "stylesheet":
            self.stylesheets.append(attributes.get("href"))
        elif tag == "body":
            self.body = attributes
        for name, value in attrs:
            if name.startswith("on") or name == "style" or (value or "").strip().startswith("javascript:"):
                self.inline_attributes.append(f"<{tag} {name}={value!r}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_bodies.append(data)


def scan(html: str) -> PageScan:
    found = PageScan()
    found.feed(html)
    return found


@pytest.mark.parametrize("path", PAGES + list(ASSETS))
def test_every_ui_response_sends_the_strict_headers_without_a_key(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200, r.text
    csp = r.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert csp_directives(csp) == EXPECTED_CSP
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    expected_type = ASSETS.get(path, "text/html")
    assert r.headers["content-type"] == f"{expected_type}; charset=utf-8"


@pytest.mark.parametrize(("path", "page"), [("/ui", "ask"), ("/ui/review", "review")])
def test_pages_have_no_inline_code_and_load_the_assets(client: TestClient, path: str, page: str) -> None:
    found = scan(client.get(path).text)
    assert found.script_bodies == [] and found.styles == 0 and found.inline_attributes == []
    assert [s.get("src") for s in found.scripts] == ["/ui/assets/ui.js"]
    assert found.stylesheets == ["/ui/assets/ui.css"]
    assert found.body.get("data-page") == page and found.body.get("data-root") == ""


def test_the_mount_point_reaches_the_script_as_an_escaped_attribute(app: FastAPI) -> None:
    hostile = '/rag"><script>alert(1)</script>'
    html = TestClient(app, root_path=hostile).get("/ui").text  # no `with`: no lifespan, no models
    found = scan(html)
    assert found.body.get("data-root") == hostile  # the parser unescaped what jinja escaped
    assert "<script>alert" not in html and found.script_bodies == []
    assert found.scripts[0].get("src") == f"{hostile}/ui/assets/ui.js"
    found = scan(TestClient(app, root_path="/rag").get("/ui/review").text)
    assert found.body.get("data-root") == "/rag" and found.stylesheets == ["/rag/ui/assets/ui.css"]


def test_the_assets_are_the_files_next_to_the_page(client: TestClient) -> None:
    here = Path(__file__).resolve().parents[2] / "app" / "api" / "ui"
    assert client.get("/ui/assets/ui.js").content == (here / "ui.js").read_bytes()
    assert client.get("/ui/assets/ui.css").content == (here / "ui.css").read_bytes()


def test_the_script_uses_nothing_the_csp_blocks(client: TestClient) -> None:
    script = client.get("/ui/assets/ui.js").text
    for blocked in ("eval(", "new Function", "setTimeout(\"", "setAttribute(\"style", ".style.",
                    "setAttribute(\"on", "javascript:", "{{"):  # fmt: skip
        assert blocked not in script, blocked
