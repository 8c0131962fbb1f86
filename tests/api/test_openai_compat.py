"""The OpenAI-compatible API, driven by the official `openai` client against a running server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.api.conftest import scripted_llm
from tests.conftest import free_port
from tests.live_server import live_server

pytestmark = pytest.mark.integration


@pytest.fixture
def server(make_container, llm_server) -> Iterator[str]:
    from app.factory import create_app

    container = make_container(llm=scripted_llm(llm_server), server={"default_collection": "kb"})
    with live_server(create_app(container=container), free_port()) as url:
        files = [("files", ("etna.txt", b"Mount Etna is an active volcano on the east coast of Sicily."))]
        job = httpx.post(f"{url}/v1/collections/kb/documents", files=files).json()
        for _ in range(300):
            if httpx.get(f"{url}/v1/jobs/{job['job_id']}").json()["status"] == "succeeded":
                break
            time.sleep(0.2)
        yield url


def test_models_lists_collections(server) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["kb"]


def test_completion_carries_citations_both_ways(server) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    completion = client.chat.completions.create(
        model="kb", messages=[{"role": "user", "content": "Where is Etna?"}]
    )
    content = completion.choices[0].message.content
    assert content.startswith("Etna is in Sicily [1].")
    assert "Sources:\n[1] etna" in content  # for clients that drop unknown fields
    extra = completion.model_extra or {}
    assert extra["citations"][0]["source"] == "etna.txt"
    assert completion.usage.completion_tokens > 0


def test_streaming_completion(server) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="ragserver",  # the default collection
        messages=[
            {"role": "system", "content": "ignored: ragserver's prompt template decides"},
            {"role": "user", "content": "Where is Etna?"},
        ],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, citations, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            citations = (chunk.model_extra or {}).get("citations") or citations
        if chunk.usage:
            usage = chunk.usage
    assert text.startswith("Etna is in Sicily [1].") and "Sources:" in text
    assert citations and citations[0]["source"] == "etna.txt"
    assert usage is not None and usage.total_tokens > 0


def test_errors_reach_the_client(server) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="kb", messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError, match="2048"):
        client.chat.completions.create(
            model="kb", max_tokens=100_000_000, messages=[{"role": "user", "content": "hi"}]
        )


def test_citations_are_url_annotations_too(server) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    completion = client.chat.completions.create(
        model="kb", messages=[{"role": "user", "content": "Where is Etna?"}]
    )
    message = completion.choices[0].message
    [note] = message.annotations or []
    assert note.type == "url_citation"
    assert message.content[note.url_citation.start_index : note.url_citation.end_index] == "[1]"
    document = httpx.get(note.url_citation.url)  # the document's record in ragserver
    assert document.status_code == 200 and document.json()["source"] == "etna.txt"
    assert note.url_citation.title == "etna"

    stream = client.chat.completions.create(
        model="kb", messages=[{"role": "user", "content": "Where is Etna?"}], stream=True
    )
    text, streamed = "", []
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            streamed += (chunk.choices[0].delta.model_extra or {}).get("annotations") or []
    assert len(streamed) == 1 and streamed[0]["url_citation"]["url"] == note.url_citation.url
    start, end = streamed[0]["url_citation"]["start_index"], streamed[0]["url_citation"]["end_index"]
    assert text[start:end] == "[1]"


def test_finish_reason_is_length_when_max_tokens_cuts_the_answer(server) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    ask = {"model": "kb", "messages": [{"role": "user", "content": "Where is Etna?"}]}
    assert client.chat.completions.create(**ask).choices[0].finish_reason == "stop"
    assert client.chat.completions.create(**ask, max_tokens=2).choices[0].finish_reason == "length"
    reasons = [
        c.choices[0].finish_reason
        for c in client.chat.completions.create(**ask, max_tokens=2, stream=True)
        if c.choices and c.choices[0].finish_reason
    ]
    assert reasons == ["length"]
    chat = httpx.post(f"{server}/v1/chat", json={"message": "Where is Etna?", "max_tokens": 2}).json()
    assert chat["finish_reason"] == "length"


def test_legacy_text_completions_answer_from_the_collection(server) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    completion = client.completions.create(model="kb", prompt="Where is Etna?")
    assert completion.object == "text_completion"
    assert completion.choices[0].text.startswith("Etna is in Sicily [1].")
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.model_extra or {})["citations"][0]["source"] == "etna.txt"
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model="kb", prompt="Where is Etna?", stream=True)
        if c.choices
    )
    assert text.startswith("Etna is in Sicily [1].") and "Sources:" in text
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="missing", prompt="hi")
