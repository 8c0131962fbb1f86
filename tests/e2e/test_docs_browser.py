"""`/docs` (Swagger UI) and `/redoc` render in a real browser with no network: their scripts and styles
come from the app itself. Chromium runs headless against a live server on loopback and renders the pages
(`--dump-dom` after the scripts ran) and screenshots them."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.devtools.scripted_llm import ScriptedOpenAIServer
from tests.api.conftest import scripted_llm
from tests.conftest import free_port
from tests.conftest_services import require_service
from tests.live_server import live_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    require_service("Chromium", found is not None, "`make browser` installs it (apt-get install chromium)")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, embedder, query_embedder) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from app.container import Container
    from app.factory import create_app
    from app.settings import Settings

    with ScriptedOpenAIServer() as llm:
        settings = Settings(
            _env_file=None, data_dir=tmp_path_factory.mktemp("docs") / "data", llm=scripted_llm(llm)
        )  # type: ignore[call-arg]
        app = create_app(container=Container(settings, embedder=embedder, query_embedder=query_embedder))
        with live_server(app, free_port()) as url:
            yield url


def browse(url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=15000",
            *flags,
            url,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("page", "rendered"),
    [
        ("/docs", re.compile(r'class="opblock[^"]*".*?/v1/chat/completions', re.S)),
        ("/redoc", re.compile(r"(?=.*?/v1/chat/completions)(?=.*?Ranked chunks of a collection)", re.S)),
    ],
)
def test_the_api_docs_render_offline_in_a_browser(
    server: str, page: str, rendered: re.Pattern[str], tmp_path: Path
) -> None:
    html = httpx.get(f"{server}{page}").text
    assert not re.findall(r"https?://", html), "the page must not load anything from another host"

    dom = browse(f"{server}{page}", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert rendered.search(dom.stdout), dom.stdout[:2000]  # the scripts ran and rendered the API

    shot = tmp_path / "page.png"
    result = browse(f"{server}{page}", f"--screenshot={shot}", "--window-size=1280,1600")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as image:
        pixels = image.convert("RGB").resize((320, 400))
        colours = pixels.getcolors(maxcolors=1 << 16) or []
        non_white = sum(n for n, c in colours if sum(c) < 720)
    assert len(colours) > 20 and non_white > 0.03 * 320 * 400, "the screenshot is (nearly) blank"
