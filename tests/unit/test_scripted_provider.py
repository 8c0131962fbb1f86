"""ScriptedLLM beyond the LLM contract (tests/contract/test_llm_providers.py): its script, its record,
its deadline and context window, and the factory entry that selects it."""

from __future__ import annotations

import asyncio

import pytest

from app.llm.base import LLMDelta, LLMError, context_window_of, prompt_token_counter
from app.llm.factory import build_llm
from app.llm.scripted_provider import ScriptedLLM, ScriptedStep
from app.services.prompt_budget import fit_prompt
from app.settings import LLMSettings

pytestmark = pytest.mark.unit

MESSAGES = [{"role": "user", "content": "say hello"}]


async def collect(llm: ScriptedLLM, **kwargs: object) -> list[LLMDelta]:
    return [delta async for delta in llm.stream(MESSAGES, **kwargs)]  # type: ignore[arg-type]


async def test_steps_answer_in_order_then_the_default_reply() -> None:
    llm = ScriptedLLM(lambda messages: f"you said: {messages[-1]['content']}")
    llm.enqueue_text("first")
    llm.enqueue(ScriptedStep("second", finish_reason="content_filter"))
    first = await llm.complete(MESSAGES)
    second = await collect(llm)
    third = await llm.complete(MESSAGES)
    assert (first.text, first.finish_reason) == ("first", "stop")
    assert ("".join(d.text for d in second), second[-1].finish_reason) == ("second", "content_filter")
    assert third.text == "you said: say hello"


async def test_errors_are_the_llm_errors_the_openai_provider_raises() -> None:
    llm = ScriptedLLM()
    llm.enqueue_error(429)
    llm.enqueue_error(timed_out=True)
    with pytest.raises(LLMError, match="failed") as refused:
        await llm.complete(MESSAGES)
    with pytest.raises(LLMError, match="timed out") as late:
        await collect(llm)
    assert (refused.value.status_code, refused.value.timed_out) == (429, False)
    assert (late.value.status_code, late.value.timed_out) == (None, True)
    assert refused.value.provider == "scripted 'scripted-model'"
    assert (await llm.complete(MESSAGES)).text == "This is a scripted reply."  # the queue is spent


async def test_requests_are_recorded_with_defaults_applied_and_how_they_ended() -> None:
    llm = ScriptedLLM(default_max_tokens=32, default_temperature=0.7)
    messages = [dict(m) for m in MESSAGES]
    await llm.complete(messages, max_tokens=5, temperature=0.0)
    llm.enqueue_error(500)
    with pytest.raises(LLMError):
        await collect(llm)
    messages[0]["content"] = "changed later by the caller"
    answered, failed = llm.requests
    assert (answered.messages, answered.max_tokens, answered.temperature) == (MESSAGES, 5, 0.0)
    assert (answered.stream, answered.outcome) == (False, "answered")
    assert (failed.max_tokens, failed.temperature, failed.stream, failed.outcome) == (32, 0.7, True, "failed")


async def test_a_cancelled_call_and_an_abandoned_stream_let_go() -> None:
    llm = ScriptedLLM(word_delay_s=0.01)
    llm.enqueue_delay(30)
    waiting = asyncio.create_task(llm.complete(MESSAGES))
    await asyncio.sleep(0.05)
    assert llm.in_flight == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    llm.enqueue_text("one two three four five six")
    reading = asyncio.create_task(collect(llm))
    await asyncio.sleep(0.03)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert llm.in_flight == 0
    assert [r.outcome for r in llm.requests] == ["cancelled", "cancelled"]


async def test_a_slow_stream_cannot_outlast_the_call_deadline() -> None:
    llm = ScriptedLLM(word_delay_s=0.05, deadline_s=0.2)
    llm.enqueue_text(" ".join(f"w{i}" for i in range(40)))
    received: list[str] = []
    with pytest.raises(LLMError, match="deadline") as info:
        async for delta in llm.stream(MESSAGES):
            received.append(delta.text)
    assert info.value.timed_out
    assert 0 < len(received) < 40


async def test_a_prompt_fitted_as_chat_service_fits_it_is_accepted_and_an_unfitted_one_refused() -> None:
    llm = ScriptedLLM(context_window=80)
    sources = [f"source {i} " + "lorem ipsum " * 5 for i in range(10)]

    def render(history: list[dict[str, str]], kept: list[str]) -> list[dict[str, str]]:
        return [{"role": "system", "content": "Answer from the sources."}, *history] + [
            {"role": "user", "content": "\n".join(kept) + "\nQuestion: what is lorem?"}
        ]

    budget = context_window_of(llm, 8192) - 16
    fitted = fit_prompt(render, prompt_token_counter(llm), [], sources, budget)
    assert 0 < len(fitted.sources) < len(sources)
    result = await llm.complete(fitted.messages, max_tokens=16)
    assert result.usage.prompt_tokens == fitted.tokens
    with pytest.raises(LLMError, match="context window") as info:
        await llm.complete(render([], sources), max_tokens=16)
    assert info.value.status_code == 400


async def test_a_closed_llm_refuses_calls() -> None:
    llm = ScriptedLLM()
    await llm.aclose()
    assert await llm.health() is False
    with pytest.raises(LLMError, match="closed"):
        await llm.complete(MESSAGES)
    with pytest.raises(LLMError, match="closed"):
        await collect(llm)


def test_the_factory_builds_it_from_settings() -> None:
    llm = build_llm(LLMSettings(provider="scripted", max_tokens=12, temperature=0.2, context_window=512))
    assert isinstance(llm, ScriptedLLM)
    assert (llm.model_name, llm.default_max_tokens, llm.default_temperature) == ("scripted-model", 12, 0.2)
    assert (llm.context_window, llm.deadline_s) == (512, 100.0)
    named = build_llm(LLMSettings(provider="scripted", model="demo-model"))
    assert named.model_name == "demo-model"
