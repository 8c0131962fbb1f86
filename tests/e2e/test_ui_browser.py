"""The web UI in a real headless browser (Debian's chromium driven by Playwright through its
`executable_path`), with auth on: the key is asked for once; ask with streaming, see the answer and its
citations (opening one records a `citation_opened` event), thumbs down with a correction, find it on the
review page, edit the correction and mark it for the regression set, download the set, and the file
holds it. All of it under the UI's strict CSP: any violation the browser reports fails the test."""

from __future__ import annotations

import json
import shutil
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

ETNA = "Mount Etna is an active volcano on the east coast of Sicily. It last erupted in 2021."


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    require_service("Chromium", found is not None, "`make browser` installs it (apt-get install chromium)")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, embedder, query_embedder
) -> Iterator[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    from app.container import Container
    from app.factory import create_app
    from app.settings import Settings

    with ScriptedOpenAIServer(default_reply="Etna is in Sicily [1].") as llm:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=tmp_path_factory.mktemp("ui") / "data",
            llm=scripted_llm(llm),
            auth={"mode": "api_key"},
        )
        container = Container(settings, embedder=embedder, query_embedder=query_embedder)
        _, key = container.keys.create(tenant="acme", name="ui", role="writer")
        _, admin = container.keys.create(tenant="acme", name="ui-admin", role="admin")
        with live_server(create_app(container=container), free_port()) as url:
            headers = {"Authorization": f"Bearer {key}"}
            r = httpx.post(
                f"{url}/v1/collections/volcanoes/documents",
                files=[("files", ("etna.txt", ETNA))],
                headers=headers,
            )
            assert r.status_code == 202, r.text
            for _ in range(300):
                job = httpx.get(f"{url}/v1/jobs/{r.json()['job_id']}", headers=headers).json()
                if job["status"] not in ("queued", "running"):
                    break
                import time

                time.sleep(0.1)
            assert job["status"] == "succeeded", job
            yield url, key, admin


def test_ask_rate_review_and_export_in_a_browser(server: tuple[str, str, str], tmp_path: Path) -> None:
    try:
        from playwright import sync_api
    except ImportError:  # a dev extra: `make install` has it
        sync_api = None
    require_service("Playwright", sync_api is not None, "pip install -e '.[dev]'")
    assert sync_api is not None
    expect = sync_api.expect
    url, key, _ = server
    headers = {"Authorization": f"Bearer {key}"}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(accept_downloads=True)
            prompts: list[str] = []

            def give_key(dialog) -> None:  # type: ignore[no-untyped-def]
                prompts.append(dialog.message)
                dialog.accept(key)

            page.on("dialog", give_key)
            # Chromium reports what the CSP refused (an inline script, style or handler) on the console.
            refused: list[str] = []

            def csp_violation(message) -> None:  # type: ignore[no-untyped-def]
                if "Content Security Policy" in message.text:
                    refused.append(message.text)

            page.on("console", csp_violation)
            page.on("pageerror", lambda error: refused.append(f"uncaught: {error}"))
            page.goto(f"{url}/ui")
            # The first API call is refused (401): the page asks for the key once, then lists collections.
            expect(page.locator("#collection")).to_have_value("volcanoes", timeout=20000)
            assert len(prompts) == 1

            page.fill("#question", "Where is Etna?")
            page.click("#ask")
            page.wait_for_selector("#citations a.citation", timeout=30000)
            assert page.inner_text("#answer").strip() == "Etna is in Sicily [1]."
            response_id = page.get_attribute("#answer", "data-response-id")
            assert response_id and response_id.startswith("resp_")
            page.click("#citations a.citation")
            page.wait_for_selector("#citations .chunk:not([hidden])")
            assert "east coast of Sicily" in page.inner_text("#citations .chunk")

            page.click("#thumbs-down")
            page.fill("#comment", "Say which coast.")
            page.fill("#correction", "On the east coast of Sicily.")
            page.click("#send-feedback")
            expect(page.locator("#feedback-state")).to_contain_text("saved")
            trace = httpx.get(f"{url}/v1/responses/{response_id}", headers=headers).json()
            assert trace["events"] == {"citation_opened": 1}
            assert trace["feedback"][0]["rating"] == "down"
            assert trace["feedback"][0]["correction"] == "On the east coast of Sicily."

            page.goto(f"{url}/ui/review")
            row = page.wait_for_selector(f"tr.item[data-id='{response_id}']", timeout=20000)
            row.click()
            expect(page.locator("#review-question")).to_have_text("Where is Etna?")
            assert "east coast of Sicily" in page.inner_text("#review-chunks")
            assert page.input_value("#review-correction") == "On the east coast of Sicily."
            page.fill("#review-correction", "On the east coast of Sicily, near Catania.")
            page.check("#review-mark")
            page.click("#review-save")
            expect(page.locator("#review-state")).to_have_text("Saved.")
            with page.expect_download() as download:
                page.click("#review-export")
            saved = tmp_path / "regression.jsonl"
            download.value.save_as(saved)
            page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
            assert refused == []
        finally:
            browser.close()
    rows = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [r["response_id"] for r in rows] == [response_id]
    assert rows[0]["question"] == "Where is Etna?"
    assert rows[0]["references"] == ["On the east coast of Sicily, near Catania."]
    assert rows[0]["collection"] == "volcanoes"


def test_the_review_page_lists_experiments_and_downloads_their_report(
    server: tuple[str, str, str], tmp_path: Path
) -> None:
    """An admin key sees the tenant's experiments on the review page; a report downloads as one page."""
    from playwright import sync_api

    url, _, admin = server
    headers = {"Authorization": f"Bearer {admin}"}
    spec = {"name": "ui-exp", "collections": ["volcanoes"], "arms": [{"name": "control", "weight": 1},
            {"name": "v4", "weight": 1, "overrides": {"prompt": "answer@v4"}}]}  # fmt: skip
    assert httpx.post(f"{url}/v1/admin/experiments", json=spec, headers=headers).status_code == 201
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(accept_downloads=True)
            page.on("dialog", lambda dialog: dialog.accept(admin))
            page.goto(f"{url}/ui/review")
            link = page.wait_for_selector("#experiment-list a", timeout=20000)
            assert link.inner_text() == "ui-exp: report (download)"
            with page.expect_download() as download:
                link.click()
            saved = tmp_path / "report.html"
            download.value.save_as(saved)
        finally:
            browser.close()
    report = saved.read_text()
    assert "Experiment <code>ui-exp</code>" in report and "Sample ratio" in report
