"""OpenAICompatibleLLM and FallbackLLM against the scripted OpenAI server (real HTTP, real client)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from app.devtools.net import free_port
from app.devtools.scripted_llm import ScriptedOpenAIServer
from app.llm.base import LLM, LLMError
from app.llm.factory import build_llm
from app.llm.fallback import FallbackLLM
from app.llm.openai_provider import OpenAICompatibleLLM
from app.settings import LLMSettings

pytestmark = pytest.mark.unit

MESSAGES = [{"role": "user", "content": "say hello"}]


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(model="primary-model") as srv:
        yield srv


@pytest.fixture
def backup() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer("fallback answer", model="backup-model") as srv:
        yield srv


def make_llm(server: ScriptedOpenAIServer, **overrides: float) -> OpenAICompatibleLLM:
    options = {"timeout_s": 5.0, "max_retries": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    options.update(overrides)
    return OpenAICompatibleLLM(
        server.base_url,
        "test-key",
        server.model,
        default_max_tokens=64,
        default_temperature=0.0,
        **options,  # type: ignore[arg-type]
    )


async def collect(llm: LLM, **kwargs: object) -> list:
    return [delta async for delta in llm.stream(MESSAGES, **kwargs)]  # type: ignore[arg-type]


async def test_complete_returns_text_usage_and_sends_request(server: ScriptedOpenAIServer) -> None:
    server.enqueue_text("hello world from the server")
    llm = make_llm(server)
    result = await llm.complete(MESSAGES, max_tokens=10, temperature=0.5)
    await llm.aclose()

    assert result.text == "hello world from the server"
    assert result.model == "primary-model"
    assert result.finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (2, 5)
    assert result.usage.total_tokens == 7
    (body,) = server.requests
    assert body["messages"] == MESSAGES
    assert (body["max_tokens"], body["temperature"], body["model"]) == (10, 0.5, "primary-model")


async def test_stream_deltas_join_to_text_and_last_carries_usage(server: ScriptedOpenAIServer) -> None:
    server.enqueue_text("one two three four")
    llm = make_llm(server)
    deltas = await collect(llm)
    await llm.aclose()

    assert "".join(d.text for d in deltas) == "one two three four"
    assert len([d for d in deltas if d.text]) == 4
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 4
    assert all(d.usage is None for d in deltas[:-1])
    assert all(d.model == "primary-model" for d in deltas)
    assert server.requests[0]["stream"] is True
    assert server.requests[0]["stream_options"] == {"include_usage": True}


async def test_rate_limit_is_retried_once_and_answers_once(server: ScriptedOpenAIServer) -> None:
    server.enqueue_error(429)
    server.enqueue_text("after the retry")
    llm = make_llm(server)
    result = await llm.complete(MESSAGES)
    server.enqueue_error(429)
    server.enqueue_text("streamed after the retry")
    deltas = await collect(llm)
    await llm.aclose()

    assert result.text == "after the retry"
    assert "".join(d.text for d in deltas) == "streamed after the retry"
    assert len(server.requests) == 4


async def test_client_error_is_not_retried(server: ScriptedOpenAIServer) -> None:
    server.enqueue_error(400)
    llm = make_llm(server)
    with pytest.raises(LLMError) as info:
        await llm.complete(MESSAGES)
    await llm.aclose()
    assert info.value.status_code == 400
    assert len(server.requests) == 1


async def test_repeated_500_gives_llm_error_naming_the_provider(server: ScriptedOpenAIServer) -> None:
    for _ in range(3):
        server.enqueue_error(500)
    llm = make_llm(server, max_retries=2)
    with pytest.raises(LLMError) as info:
        await llm.complete(MESSAGES)
    await llm.aclose()
    assert server.base_url in str(info.value)
    assert info.value.status_code == 500
    assert len(server.requests) == 3


async def test_repeated_500_falls_back(server: ScriptedOpenAIServer, backup: ScriptedOpenAIServer) -> None:
    for _ in range(6):
        server.enqueue_error(500)
    llm = FallbackLLM(make_llm(server, max_retries=2), make_llm(backup))
    result = await llm.complete(MESSAGES)
    deltas = await collect(llm)
    await llm.aclose()

    assert (result.text, result.model) == ("fallback answer", "backup-model")
    assert "".join(d.text for d in deltas) == "fallback answer"
    assert {d.model for d in deltas} == {"backup-model"}
    assert len(server.requests) == 6
    assert len(backup.requests) == 2


async def test_stream_failing_after_first_token_is_not_retried_nor_fallen_back(
    server: ScriptedOpenAIServer, backup: ScriptedOpenAIServer
) -> None:
    server.enqueue_text("alpha beta gamma delta", drop_after=2)
    llm = FallbackLLM(make_llm(server), make_llm(backup))
    received: list[str] = []
    with pytest.raises(LLMError):
        async for delta in llm.stream(MESSAGES):
            received.append(delta.text)
    await llm.aclose()

    assert "".join(received) == "alpha beta"
    assert len(server.requests) == 1
    assert backup.requests == []


async def test_timeout_raises_llm_error_quickly(server: ScriptedOpenAIServer) -> None:
    server.enqueue_delay(10)
    llm = make_llm(server, timeout_s=0.5, max_retries=0)
    started = time.monotonic()
    with pytest.raises(LLMError, match="timed out") as info:
        await llm.complete(MESSAGES)
    await llm.aclose()
    assert time.monotonic() - started < 3
    assert info.value.timed_out  # the API answers 504 llm_timeout, not 502


async def test_stream_timeout_before_first_token_is_retried(server: ScriptedOpenAIServer) -> None:
    server.enqueue_delay(10)
    server.enqueue_text("second try")
    llm = make_llm(server, timeout_s=0.5, max_retries=1)
    deltas = await collect(llm)
    await llm.aclose()
    assert "".join(d.text for d in deltas) == "second try"
    assert len(server.requests) == 2


async def test_a_slow_dripping_stream_cannot_outlast_the_call_deadline(server: ScriptedOpenAIServer) -> None:
    # Each word arrives well within the read timeout; all of them would take 10 s.
    server.word_delay_s = 0.25
    server.enqueue_text(" ".join(f"w{i}" for i in range(40)))
    llm = make_llm(server, timeout_s=5.0, deadline_s=1.0)
    received: list[str] = []
    started = time.monotonic()
    with pytest.raises(LLMError, match="deadline") as info:
        async for delta in llm.stream(MESSAGES):
            received.append(delta.text)
    await llm.aclose()
    assert info.value.timed_out
    assert 0 < len(received) < 40
    assert time.monotonic() - started < 2


async def test_retries_cannot_outlast_the_call_deadline(server: ScriptedOpenAIServer) -> None:
    for _ in range(4):
        server.enqueue_delay(10)
    # Four attempts of 0.8 s plus backoff would take over 3 s; the deadline ends the call at 1.5 s.
    llm = make_llm(server, timeout_s=0.8, max_retries=3, deadline_s=1.5)
    started = time.monotonic()
    with pytest.raises(LLMError) as info:
        await llm.complete(MESSAGES)
    await llm.aclose()
    assert info.value.timed_out
    assert time.monotonic() - started < 2.2


async def test_health_true_when_up_false_when_down(server: ScriptedOpenAIServer) -> None:
    up = make_llm(server)
    down = OpenAICompatibleLLM(f"http://127.0.0.1:{free_port()}/v1", "k", "m", health_timeout_s=1.0)
    started = time.monotonic()
    assert await up.health() is True
    assert await down.health() is False
    assert time.monotonic() - started < 3
    await up.aclose()
    await down.aclose()


async def test_unreachable_server_raises_llm_error() -> None:
    llm = OpenAICompatibleLLM(
        f"http://127.0.0.1:{free_port()}/v1", "k", "m", timeout_s=1.0, max_retries=1, backoff_initial_s=0.01
    )
    with pytest.raises(LLMError):
        await llm.complete(MESSAGES)
    with pytest.raises(LLMError):
        await collect(llm)
    await llm.aclose()


async def test_factory_builds_openai_with_fallback(
    server: ScriptedOpenAIServer, backup: ScriptedOpenAIServer
) -> None:
    settings = LLMSettings(
        provider="openai",
        base_url=server.base_url,
        model="primary-model",
        max_retries=0,
        fallback_base_url=backup.base_url,
        fallback_model="backup-model",
    )
    llm = build_llm(settings)
    assert isinstance(llm, FallbackLLM)
    server.enqueue_error(503)
    result = await llm.complete(MESSAGES)
    await llm.aclose()
    assert result.model == "backup-model"


def test_factory_defaults() -> None:
    from app.llm.local_provider import LocalLLM

    local = build_llm(LLMSettings())
    assert isinstance(local, LocalLLM)
    assert local.model_name == "Qwen2.5-Coder-0.5B-Instruct"  # the default local model
    small = build_llm(LLMSettings(local_model="smollm2"))
    assert isinstance(small, LocalLLM) and small.model_name == "SmolLM2-135M-Instruct"
    remote = build_llm(LLMSettings(provider="openai", model="gpt-4o-mini"))
    assert isinstance(remote, OpenAICompatibleLLM)
    assert remote.base_url == "https://api.openai.com/v1"


async def test_embeddings_are_deterministic_and_normalised(server: ScriptedOpenAIServer) -> None:
    import numpy as np
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    first = await client.embeddings.create(model="e", input=["red apple", "red apples", "blue car"])
    again = await client.embeddings.create(model="e", input="red apple", encoding_format="float")
    await client.close()

    vectors = np.array([d.embedding for d in first.data])
    assert vectors.shape == (3, server.embedding_dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], again.data[0].embedding, atol=1e-6)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
