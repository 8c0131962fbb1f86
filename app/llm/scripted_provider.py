"""An in-process scripted LLM, for tests and demos: the `LLM` protocol with no model, socket or thread.

simonw/llm's `MockModel` for this server. Queue what the next calls answer, then read what they were
asked:

    llm = ScriptedLLM(default_reply="Etna is in Sicily [1].")
    llm.enqueue_error(503)
    llm.enqueue_text("hello world", delay_s=0.1)
    ...
    assert llm.requests[0].max_tokens == 256

It answers as `OpenAICompatibleLLM` does in front of the scripted HTTP server
(`app.devtools.scripted_llm`), so a test can use either: tokens are whitespace words; a stream yields
one word a delta (its leading space included), then a last delta with usage and finish_reason;
max_tokens cuts an answer with finish_reason "length"; failures are the LLMErrors that provider raises.
Unlike the HTTP fake there are no retries: each call takes one step. `llm.provider = "scripted"`
selects it (`app/llm/factory.py`).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from app.llm.base import Completion, LLMDelta, LLMError, Messages, Usage, estimate_prompt_tokens

Reply = str | Callable[[Messages], str]

# A word and the whitespace before it: the deltas of a stream join back to the text.
_WORD = re.compile(r"\s*\S+")


@dataclass(frozen=True)
class ScriptedStep:
    """One scripted answer: wait `delay_s`, then fail (`status`, `timed_out`) or answer `text`."""

    text: str | None = None  # None: the default reply
    delay_s: float = 0.0
    finish_reason: str = "stop"  # unless max_tokens cuts the answer ("length")
    status: int | None = None  # fail as an upstream answering with this HTTP status
    timed_out: bool = False  # fail as an upstream that did not answer in time
    drop_after: int | None = None  # streaming only: fail after this many text deltas (a dropped connection)

    @property
    def fails(self) -> bool:
        return self.timed_out or self.status is not None


@dataclass
class ScriptedRequest:
    """One call as the scripted LLM received it, defaults applied (what an upstream would see)."""

    messages: Messages
    max_tokens: int
    temperature: float
    stream: bool
    # "answered", "failed" (LLMError), "cancelled" (the caller left: a stream closed early, a task
    # cancelled); None while the call runs.
    outcome: str | None = None


class ScriptedLLM:
    """Answers from a queue of `ScriptedStep`s, else `default_reply` (a string, or a callable(messages)
    -> str); records every call in `requests`.

    `word_delay_s` paces every answer (per word of a stream; words * delay for `complete`). Delays count
    against `deadline_s` (None: no deadline), past which a call raises a timed-out LLMError, as
    OpenAICompatibleLLM's call deadline does. A prompt of more than `context_window - max_tokens`
    tokens (`count_prompt_tokens`) is refused with status 400, as vLLM and OpenAI refuse one, so a
    caller that fits prompts with `prompt_token_counter` / `context_window_of` is held to its budget.
    """

    def __init__(
        self,
        default_reply: Reply = "This is a scripted reply.",
        *,
        model: str = "scripted-model",
        default_max_tokens: int = 256,
        default_temperature: float = 0.0,
        context_window: int = 8192,
        deadline_s: float | None = None,
        word_delay_s: float = 0.0,
    ) -> None:
        self.default_reply = default_reply
        self.model_name = model
        self.default_max_tokens = default_max_tokens
        self.default_temperature = default_temperature
        self.context_window = context_window
        self.deadline_s = deadline_s
        self.word_delay_s = word_delay_s
        self.healthy = True
        self.requests: list[ScriptedRequest] = []
        # Calls running now; a stream counts until it ends or its caller closes it.
        self.in_flight = 0
        self._steps: deque[ScriptedStep] = deque()
        self._closed = False

    @property
    def _provider(self) -> str:
        return f"scripted {self.model_name!r}"

    # -- scripting -------------------------------------------------------------------------------
    def enqueue(self, step: ScriptedStep) -> None:
        """The call after those already queued takes `step`."""
        self._steps.append(step)

    def enqueue_text(
        self, text: str, *, delay_s: float = 0.0, finish_reason: str = "stop", drop_after: int | None = None
    ) -> None:
        """A call answers `text` (after `delay_s`), ending with `finish_reason` unless max_tokens cuts
        it; a stream fails after `drop_after` text deltas when set."""
        self.enqueue(ScriptedStep(text, delay_s, finish_reason, drop_after=drop_after))

    def enqueue_error(
        self, status: int | None = 500, *, timed_out: bool = False, delay_s: float = 0.0
    ) -> None:
        """A call fails (after `delay_s`) as OpenAICompatibleLLM does once retries are spent: an
        LLMError with `status_code=status`, or with `timed_out=True` (and no status: a request that timed
        out got none)."""
        self.enqueue(ScriptedStep(delay_s=delay_s, status=None if timed_out else status, timed_out=timed_out))

    def enqueue_delay(self, seconds: float, text: str | None = None) -> None:
        """A call waits `seconds` before it answers (the default reply unless `text`): past `deadline_s`
        it times out."""
        self.enqueue(ScriptedStep(text, delay_s=seconds))

    # -- the LLM protocol ------------------------------------------------------------------------
    def count_prompt_tokens(self, messages: Messages) -> int:
        """The prompt's tokens as this model counts them (whitespace words), as usage reports them."""
        return estimate_prompt_tokens(messages)

    async def complete(
        self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> Completion:
        """The next step's answer in one piece; raises LLMError for a scripted failure."""
        request, step = self._take(messages, max_tokens, temperature, stream=False)
        with self._running(request):
            deadline = self._deadline()
            words, finish = await self._answer(request, step, deadline)
            await self._sleep(self.word_delay_s * len(words), deadline)
        usage = Usage(self.count_prompt_tokens(messages), len(words))
        return Completion(text="".join(words), model=self.model_name, usage=usage, finish_reason=finish)

    async def stream(
        self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> AsyncIterator[LLMDelta]:
        """Yield the next step's answer a word at a time, then a last delta with usage and
        finish_reason. Closing the generator (or cancelling its reader) stops it where it is."""
        request, step = self._take(messages, max_tokens, temperature, stream=True)
        with self._running(request):
            deadline = self._deadline()
            words, finish = await self._answer(request, step, deadline)
            for i, word in enumerate(words):
                if step.drop_after is not None and i >= step.drop_after:
                    raise LLMError(
                        "failed: the connection dropped mid-stream (scripted)", provider=self._provider
                    )
                await self._sleep(self.word_delay_s, deadline)
                yield LLMDelta(text=word, model=self.model_name)
            usage = Usage(self.count_prompt_tokens(messages), len(words))
            yield LLMDelta(text="", usage=usage, model=self.model_name, finish_reason=finish)

    async def health(self) -> bool:
        """`healthy` (True unless a test says otherwise), and not closed."""
        return self.healthy and not self._closed

    async def aclose(self) -> None:
        """Refuse further calls, as a closed provider does."""
        self._closed = True

    # -- internals -------------------------------------------------------------------------------
    def _take(
        self, messages: Messages, max_tokens: int | None, temperature: float | None, *, stream: bool
    ) -> tuple[ScriptedRequest, ScriptedStep]:
        """Record the call and take its step."""
        if self._closed:
            raise LLMError("closed", provider=self._provider)
        request = ScriptedRequest(
            messages=[dict(m) for m in messages],  # a copy: the caller may reuse its list
            max_tokens=max_tokens if max_tokens is not None else self.default_max_tokens,
            temperature=temperature if temperature is not None else self.default_temperature,
            stream=stream,
        )
        self.requests.append(request)
        return request, self._steps.popleft() if self._steps else ScriptedStep()

    @contextmanager
    def _running(self, request: ScriptedRequest) -> Iterator[None]:
        """Count the call in `in_flight` and record how it ended."""
        self.in_flight += 1
        try:
            yield
        except LLMError:
            request.outcome = "failed"
            raise
        except BaseException:  # GeneratorExit (a stream closed early), CancelledError
            request.outcome = "cancelled"
            raise
        else:
            request.outcome = "answered"
        finally:
            self.in_flight -= 1

    async def _answer(
        self, request: ScriptedRequest, step: ScriptedStep, deadline: float | None
    ) -> tuple[list[str], str]:
        """Wait the step's delay, fail as scripted, or return the answer's words (cut at max_tokens)
        and its finish reason."""
        await self._sleep(step.delay_s, deadline)
        if step.timed_out:
            raise LLMError(
                "timed out: the scripted upstream did not answer", provider=self._provider, timed_out=True
            )
        if step.status is not None:
            raise LLMError(
                f"failed: scripted error {step.status}", provider=self._provider, status_code=step.status
            )
        prompt_tokens = self.count_prompt_tokens(request.messages)
        if prompt_tokens + request.max_tokens > self.context_window:
            raise LLMError(
                f"failed: a prompt of {prompt_tokens} tokens plus max_tokens {request.max_tokens} is over "
                f"the {self.context_window}-token context window",
                provider=self._provider,
                status_code=400,
            )
        text = step.text if step.text is not None else self._reply(request.messages)
        words = _WORD.findall(text)
        if len(words) > request.max_tokens:
            return words[: request.max_tokens], "length"
        return words, step.finish_reason

    def _reply(self, messages: Messages) -> str:
        reply = self.default_reply
        return reply(messages) if callable(reply) else reply

    def _deadline(self) -> float | None:
        if self.deadline_s is None:
            return None
        return asyncio.get_running_loop().time() + self.deadline_s

    async def _sleep(self, seconds: float, deadline: float | None) -> None:
        """Sleep `seconds`, or until `deadline` and then raise the call deadline's LLMError."""
        if seconds <= 0:
            # Still hand the loop over, as a provider waiting on I/O does: a stream with no delays
            # must not starve the tasks beside its reader (a disconnect watcher, a ticker).
            await asyncio.sleep(0)
            return
        if deadline is not None and asyncio.get_running_loop().time() + seconds > deadline:
            await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))
            raise LLMError(
                f"timed out: no complete answer within the {self.deadline_s:g} s call deadline",
                provider=self._provider,
                timed_out=True,
            )
        await asyncio.sleep(seconds)
