"""The `LLM` contract (haystack's `testing/document_store.py` style): every provider passes it.

Subclasses provide a `subject` fixture (a `Subject`: the provider and the hooks that steer it) and name
in `cannot` what their provider cannot be made to do, with the reason: the tests that need it skip with
that reason. The prompts let a real model pass too, deterministically at temperature 0: only the shape
of its answers is checked, and COUNTING is answered at length wherever max_tokens must cut.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import pytest

from app.llm.base import LLM, LLMDelta, LLMError, Messages, context_window_of, prompt_token_counter

QUESTION: Messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
COUNTING: Messages = [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]
LONG_TEXT = " ".join(f"word{i}" for i in range(300))

# What a provider may be unable to do, and what the tests that need it ask of it.
CAPABILITIES = {
    "script": "its next answer can be set to a given text (exact text, deltas word by word, a drop)",
    "cut_at_max_tokens": "it reports an answer cut by max_tokens as finish_reason 'length'",
    "time_out": "a call can be made to outlast its time limit",
    "record": "it records the requests it receives",
}


@dataclass
class Subject:
    """A provider under test and the hooks that steer it (None where the class says it `cannot`)."""

    llm: LLM
    # Arrange for the next call to fail upstream; returns the LLM to call (`llm`, or a broken twin).
    fail: Callable[[], LLM]
    # say(text, drop_after=None): the next call answers `text` (a stream drops after `drop_after` words).
    say: Callable[..., None] | None = None
    # Arrange for the next call to outlast its time limit; returns the LLM to call.
    stall: Callable[[], LLM] | None = None
    # The requests received so far, as {"messages", "max_tokens", "temperature"}.
    sent: Callable[[], list[dict[str, Any]]] | None = None
    # True when no call holds the provider any more (checked after a stream is closed early).
    released: Callable[[], bool] | None = None
    # The temperature the provider sends when the caller gives none.
    default_temperature: float = 0.0


async def collect(deltas: Any) -> list[LLMDelta]:
    return [delta async for delta in deltas]


class LLMContract:
    """Subclasses provide a `subject` fixture (a `Subject`) and set `cannot`."""

    #: capability (a key of CAPABILITIES) -> why this provider cannot do it.
    cannot: ClassVar[dict[str, str]] = {}

    def needs(self, capability: str) -> None:
        assert capability in CAPABILITIES, capability
        if capability in self.cannot:
            pytest.skip(f"{type(self).__name__} cannot be tested for this: {self.cannot[capability]}")

    def test_capabilities_are_known(self) -> None:
        assert set(self.cannot) <= set(CAPABILITIES)

    async def test_is_an_llm_and_healthy(self, subject: Subject) -> None:
        assert isinstance(subject.llm, LLM)
        assert await subject.llm.health() is True

    async def test_complete_returns_text_model_and_usage(self, subject: Subject) -> None:
        result = await subject.llm.complete(QUESTION, max_tokens=16)
        assert result.text.strip()
        assert result.model == subject.llm.model_name
        assert result.usage.prompt_tokens > 0
        assert 0 < result.usage.completion_tokens <= 16
        assert result.finish_reason in {"stop", "length"}

    async def test_stream_yields_text_deltas_then_usage_and_finish_reason(self, subject: Subject) -> None:
        deltas = await collect(subject.llm.stream(QUESTION, max_tokens=16))
        *pieces, last = deltas
        assert pieces and all(d.text for d in pieces)
        assert all(d.usage is None and d.finish_reason is None for d in pieces)
        assert last.usage is not None and last.finish_reason in {"stop", "length"}
        assert 0 < last.usage.completion_tokens <= 16
        assert {d.model for d in deltas} == {subject.llm.model_name}

    async def test_stream_joins_to_what_complete_answers(self, subject: Subject) -> None:
        completed = await subject.llm.complete(QUESTION, max_tokens=16, temperature=0.0)
        deltas = await collect(subject.llm.stream(QUESTION, max_tokens=16, temperature=0.0))
        assert "".join(d.text for d in deltas) == completed.text
        assert (deltas[-1].usage, deltas[-1].finish_reason) == (completed.usage, completed.finish_reason)

    async def test_complete_returns_the_scripted_answer(self, subject: Subject) -> None:
        self.needs("script")
        assert subject.say is not None
        subject.say("hello world from the backend")
        result = await subject.llm.complete(QUESTION)
        assert result.text == "hello world from the backend"
        assert (result.usage.completion_tokens, result.finish_reason) == (5, "stop")

    async def test_stream_delivers_the_scripted_answer_word_by_word(self, subject: Subject) -> None:
        self.needs("script")
        assert subject.say is not None
        subject.say("one two three")
        deltas = await collect(subject.llm.stream(QUESTION))
        assert [d.text for d in deltas] == ["one", " two", " three", ""]
        assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 3

    async def test_max_tokens_cuts_the_answer_with_finish_reason_length(self, subject: Subject) -> None:
        self.needs("cut_at_max_tokens")
        if subject.say is not None:
            subject.say(LONG_TEXT)
            subject.say(LONG_TEXT)
        result = await subject.llm.complete(COUNTING, max_tokens=5)
        assert (result.finish_reason, result.usage.completion_tokens) == ("length", 5)
        last = (await collect(subject.llm.stream(COUNTING, max_tokens=5)))[-1]
        assert last.usage is not None
        assert (last.finish_reason, last.usage.completion_tokens) == ("length", 5)

    async def test_the_request_reaches_the_backend_as_sent(self, subject: Subject) -> None:
        self.needs("record")
        assert subject.sent is not None
        await subject.llm.complete(QUESTION, max_tokens=7, temperature=0.3)
        await collect(subject.llm.stream(COUNTING, max_tokens=9))
        assert subject.sent() == [
            {"messages": QUESTION, "max_tokens": 7, "temperature": 0.3},
            {"messages": COUNTING, "max_tokens": 9, "temperature": subject.default_temperature},
        ]

    async def test_an_upstream_error_becomes_llm_error(self, subject: Subject) -> None:
        # pytest.raises(LLMError) lets any other exception through: a raw one fails the test.
        for call in (self._complete, self._stream):
            llm = subject.fail()
            try:
                with pytest.raises(LLMError) as info:
                    await call(llm)
            finally:
                if llm is not subject.llm:
                    await llm.aclose()
            assert not info.value.timed_out
            assert str(info.value).startswith(info.value.provider)  # the log says which backend broke

    async def test_a_stream_cut_mid_way_raises_llm_error_after_the_text_so_far(
        self, subject: Subject
    ) -> None:
        self.needs("script")
        assert subject.say is not None
        subject.say("alpha beta gamma delta", drop_after=2)
        received: list[str] = []
        with pytest.raises(LLMError) as info:
            async for delta in subject.llm.stream(QUESTION):
                received.append(delta.text)
        assert "".join(received) == "alpha beta"
        assert not info.value.timed_out

    async def test_a_timeout_becomes_llm_error_that_says_it_timed_out(self, subject: Subject) -> None:
        self.needs("time_out")
        assert subject.stall is not None
        for call in (self._complete, self._stream):
            # wait_for only keeps a provider that never times out from hanging the suite.
            with pytest.raises(LLMError, match="timed out") as info:
                await asyncio.wait_for(call(subject.stall()), timeout=30)
            assert info.value.timed_out

    async def test_closing_a_stream_early_releases_it(self, subject: Subject) -> None:
        if subject.say is not None:
            subject.say(LONG_TEXT)
        stream = cast(AsyncGenerator[LLMDelta, None], subject.llm.stream(COUNTING, max_tokens=1000))
        async for delta in stream:
            if delta.text:
                break
        await stream.aclose()
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        if subject.released is not None:
            assert subject.released()
        # Had the abandoned answer kept the provider busy for its 1000 tokens, this would wait for it.
        result = await asyncio.wait_for(subject.llm.complete(QUESTION, max_tokens=8), timeout=30)
        assert result.text.strip()

    async def test_prompt_tokens_are_counted_as_usage_reports_them_or_over(self, subject: Subject) -> None:
        # ChatService fits prompts with prompt_token_counter: an own counter must be exact, the
        # estimate it falls back on must not count fewer tokens than the backend bills.
        result = await subject.llm.complete(QUESTION, max_tokens=4)
        counted = prompt_token_counter(subject.llm)(QUESTION)
        if callable(getattr(subject.llm, "count_prompt_tokens", None)):
            assert counted == result.usage.prompt_tokens
        else:
            assert counted >= result.usage.prompt_tokens
        assert context_window_of(subject.llm, 0) > result.usage.total_tokens

    @staticmethod
    async def _complete(llm: LLM) -> None:
        await llm.complete(QUESTION, max_tokens=8)

    @staticmethod
    async def _stream(llm: LLM) -> None:
        await collect(llm.stream(QUESTION, max_tokens=8))
