"""A ragserver answering from a small knowledge base with a scripted LLM over real HTTP, for the
generation-limit, fault and shutdown tests (real embedder, real Chroma, real history store)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from app.container import Container
from app.devtools.scripted_llm import ScriptedOpenAIServer
from app.settings import Settings
from ingest.loaders import iter_documents
from tests.api.conftest import scripted_llm

KB = {
    "etna.txt": "Mount Etna is an active volcano on the east coast of Sicily.",
    "chess.txt": "The Sicilian Defence is a chess opening that begins 1.e4 c5.",
    "penguins.txt": "Emperor penguins breed during the Antarctic winter.",
}
ETNA = "Where is Etna?"


def build_container(
    data_dir: Path, embedder: Any, query_embedder: Any, llm: ScriptedOpenAIServer, **sections: dict[str, Any]
) -> Container:
    """A container on `data_dir` whose LLM is `llm` (no retries), default collection "kb"; `sections`
    override settings sections (`limits={...}`, `history={...}`)."""
    overrides: dict[str, Any] = {"llm": scripted_llm(llm), "server": {"default_collection": "kb"}}
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    settings = Settings(_env_file=None, data_dir=data_dir, **overrides)  # type: ignore[call-arg]
    return Container(settings, embedder=embedder, query_embedder=query_embedder)


def ingest(container: Container, folder: Path, files: dict[str, str] = KB, collection: str = "kb") -> None:
    """Write `files` under `folder` and ingest them into `collection` (directly, not through the API)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    report = container.pipeline.ingest(iter_documents([folder]), collection)
    assert report.ok, report.to_dict()


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str | None, Any]]:
    """(event name, JSON data) of each SSE message in `lines` (an httpx response's iter_lines())."""
    event = None
    for line in lines:
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data = line.split(":", 1)[1].strip()
            yield event, data if data == "[DONE]" else json.loads(data)
            event = None


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one sample on the server's /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", re.MULTILINE)
    for found_labels, value in pattern.findall(text):
        if ",".join(sorted(found_labels.split(","))) == wanted or (not wanted and not found_labels):
            return float(value)
    return 0.0


def wait_until(condition: Any, timeout: float = 10.0, every: float = 0.05) -> None:
    """Poll `condition()` until it is true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")
