"""The OpenAI-compatible API, driven by the official `openai` client against a running server."""

from __future__ import annotations

import json
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


def test_the_responses_api_carries_citations_as_annotations(server) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    response = client.responses.create(model="kb", input="Where is Etna?")
    assert response.status == "completed" and response.output_text.startswith("Etna is in Sicily [1].")
    [part] = response.output[0].content
    [note] = part.annotations
    assert note.type == "url_citation" and part.text[note.start_index : note.end_index] == "[1]"
    assert httpx.get(note.url).json()["source"] == "etna.txt"
    assert response.usage.output_tokens > 0

    events = list(
        client.responses.create(
            model="kb", input=[{"role": "user", "content": "Where is Etna?"}], stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text
    assert events[-1].response.output[0].content[0].annotations[0].url == note.url

    capped = client.responses.create(model="kb", input="Where is Etna?", max_output_tokens=2)
    assert capped.status == "incomplete" and capped.incomplete_details.reason == "max_output_tokens"
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(model="kb", input="And then?", previous_response_id="resp_x")


def test_langchain_and_llamaindex_clients_get_answers_with_citations(server) -> None:
    from langchain_openai import ChatOpenAI
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    # LangChain's default ChatOpenAI keeps the text (with its Sources list) and, when asked, the headers.
    chat = ChatOpenAI(model="kb", base_url=f"{server}/v1", api_key="unused", include_response_headers=True)
    reply = chat.invoke("Where is Etna?")
    assert "Etna is in Sicily [1]." in reply.content and "Sources:" in reply.content
    cited = json.loads(reply.response_metadata["headers"]["x-ragserver-citations"])
    assert cited[0]["source"] == "etna.txt"
    # With the Responses API, the citations are annotations of the text.
    responses = ChatOpenAI(model="kb", base_url=f"{server}/v1", api_key="unused", use_responses_api=True)
    blocks = responses.invoke("Where is Etna?").content
    text_block = next(b for b in blocks if isinstance(b, dict) and b.get("type") == "text")
    assert text_block["annotations"][0]["url"].endswith("/documents/" + cited[0]["document_id"])

    # LlamaIndex's OpenAILike calls /v1/completions by default, /v1/chat/completions as a chat model.
    completion = OpenAILike(model="kb", api_base=f"{server}/v1", api_key="unused").complete("Where is Etna?")
    assert completion.text.startswith("Etna is in Sicily [1].") and "Sources:" in completion.text
    chat_model = OpenAILike(model="kb", api_base=f"{server}/v1", api_key="unused", is_chat_model=True)
    answer = chat_model.chat([ChatMessage(role="user", content="Where is Etna?")])
    assert answer.message.content.startswith("Etna is in Sicily [1].")
