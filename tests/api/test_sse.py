"""Both chat streams come from the one SSE encoder (app/api/sse.py): the same framing, the same in-band
report of a failure mid-stream, and the same JSON error for a failure before the first event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.chat.router import router as chat_router
from app.api.deps import get_chat
from app.api.errors import install_error_handlers
from app.api.guards import authenticate
from app.api.openai.router import router as openai_router
from app.auth.principal import Principal
from app.llm.base import LLMError
from app.services.chat_types import ChatEvent, ChatQuery, TokenEvent
from app.settings import Settings

pytestmark = pytest.mark.unit

CHAT = ("/v1/chat", {"message": "Where is Etna?", "stream": True})
COMPLETIONS = (
    "/v1/chat/completions",
    {"model": "kb", "stream": True, "messages": [{"role": "user", "content": "Where is Etna?"}]},
)
# The client's error: a stable code and a short message; the LLMError's own text (its provider, base URL
# and upstream error) goes to the server log only.
STREAM_FAILED = {"error": {"code": "llm_unavailable", "message": "the language model is unavailable"}}


class ScriptedChat:
    """`ChatService.stream` that fails after `tokens` tokens (or before any when `tokens` is None)."""

    def __init__(self, tokens: list[str] | None) -> None:
        self.settings = Settings(_env_file=None)  # type: ignore[call-arg]
        self.tokens = tokens

    async def stream(
        self, query: ChatQuery, *, principal: Principal, **_: object
    ) -> AsyncIterator[ChatEvent]:
        if self.tokens is None:
            raise LLMError("down", provider="scripted")
        for text in self.tokens:
            yield TokenEvent(text)
        raise LLMError("connection dropped", provider="scripted")


def client_for(chat: ScriptedChat) -> Iterator[TestClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(chat_router)
    app.include_router(openai_router)
    app.dependency_overrides[get_chat] = lambda: chat
    app.dependency_overrides[authenticate] = Principal.anonymous
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def failing_mid_stream() -> Iterator[TestClient]:
    yield from client_for(ScriptedChat(["Etna", " is"]))


@pytest.fixture
def failing_at_once() -> Iterator[TestClient]:
    yield from client_for(ScriptedChat(None))


def test_chat_stream_reports_a_mid_stream_error_as_an_error_event(failing_mid_stream: TestClient) -> None:
    response = failing_mid_stream.post(CHAT[0], json=CHAT[1])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    # The exact bytes: named events, "\n" line ends, JSON data as json.dumps writes it.
    assert response.text == (
        'event: token\ndata: {"text": "Etna"}\n\n'
        'event: token\ndata: {"text": " is"}\n\n'
        f"event: error\ndata: {json.dumps(STREAM_FAILED)}\n\n"
    )
    assert "connection dropped" not in response.text


def test_completions_stream_reports_a_mid_stream_error_in_band(failing_mid_stream: TestClient) -> None:
    response = failing_mid_stream.post(COMPLETIONS[0], json=COMPLETIONS[1])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith(f"data: {json.dumps(STREAM_FAILED)}\n\ndata: [DONE]\n\n")
    messages = [block.removeprefix("data: ") for block in response.text.split("\n\n") if block]
    chunks = [json.loads(m) for m in messages[:-2]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Etna"},
        {"content": " is"},
    ]
    assert {c["model"] for c in chunks} == {"kb"} and len({c["id"] for c in chunks}) == 1


@pytest.mark.parametrize(("path", "body"), [CHAT, COMPLETIONS])
def test_a_failure_before_the_first_event_is_a_json_error(
    failing_at_once: TestClient, path: str, body: dict[str, object]
) -> None:
    response = failing_at_once.post(path, json=body)
    assert response.status_code == 502
    assert response.json() == STREAM_FAILED
    assert "scripted" not in response.text
