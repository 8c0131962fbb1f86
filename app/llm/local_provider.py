"""A small local model on CPU (`llm.local_model`: Qwen2.5-Coder-0.5B-Instruct by default, or
SmolLM2-135M-Instruct: `app/llm/local_models.py`), from a GGUF file that ships in pip packages.

It runs on OpenVINO GenAI (`app/llm/openvino_runtime.py`: converted once, loaded in seconds, prefill
~10x the transformers runtime on 2 cores), or on transformers with the GGUF dequantized to full precision
(`llm.local_runtime = transformers`, and the automatic fallback when OpenVINO cannot load the file). Both
go through the same stop flag, loop guard, stop rules and usage counts.

The runtimes and torch are imported in `load()` only, so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from app.llm.base import NEXT_TURN, Completion, LLMDelta, LLMError, Messages, Usage, approx_prompt_tokens
from app.llm.local_models import LOCAL_MODELS, materialise
from app.llm.openvino_runtime import ConversionError, OpenVINOEngine, prepare

# How the GGUF model runs: OpenVINO GenAI (converted once, cached), the dequantized transformers model,
# or "auto" (OpenVINO, else transformers with a warning).
RUNTIMES = ("auto", "openvino", "transformers")

logger = logging.getLogger(__name__)

_DONE = object()


def _default_threads() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # A 135M model stops getting faster beyond a few threads; leave cores to the embedder and the server.
    return max(1, min(cpus, 8))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORDS = re.compile(r"\w+")


def _similar(a: str, b: str) -> bool:
    """Two sentences made from one template ("He loved to play chess." / "... golf.")."""
    x, y = set(_WORDS.findall(a.lower())), set(_WORDS.findall(b.lower()))
    return len(x) >= 3 and len(y) >= 3 and len(x & y) / len(x | y) >= 0.5


class _Runaway:
    """Spots a generation running away: the same span of 4-32 tokens three times in a row (`loop`,
    with its `period`), three sentences in a row from one template (`template`: "He loved to play
    chess. He loved to play golf. He loved to play rugby."), or the start of a next turn (`transcript`).
    Checked after every token."""

    def __init__(self, prompt_len: int, decode: Any, tail_tokens: int = 16, window_tokens: int = 120):
        self.prompt_len = prompt_len
        self.decode = decode
        self.tail_tokens = tail_tokens
        self.window_tokens = window_tokens
        self.reason: str | None = None
        self.period = 0

    def check(self, ids: list[int]) -> bool:
        new = ids[self.prompt_len :]
        for period in range(4, 33):
            if len(new) < 3 * period:
                break
            if new[-period:] == new[-2 * period : -period] == new[-3 * period : -2 * period]:
                self.reason, self.period = "loop", period
                return True
        if NEXT_TURN.search(self.decode(new[-self.tail_tokens :])):
            self.reason = "transcript"
            return True
        if new and self.decode(new[-1:]).rstrip().endswith((".", "!", "?")):
            sentences = [s for s in _SENTENCE_END.split(self.decode(new[-self.window_tokens :])) if s.strip()]
            last = sentences[-3:]
            if len(last) == 3 and _similar(last[0], last[1]) and _similar(last[1], last[2]):
                self.reason = "template"
                return True
        return False


# Weights read from a GGUF file, by its content (`_file_key`): dequantizing takes seconds (16 s for SmolLM2 on
# two cores), so a process that builds several LocalLLMs over one file (two containers in one eval
# run, a fallback chain, the tests) reads it once. The model is only read by generate(), so instances
# may share it; each keeps its own tokenizers and worker thread.
_WEIGHTS: dict[str, tuple[Any, Any]] = {}
_WEIGHTS_LOCK = threading.Lock()


def _file_key(path: Path) -> str:
    """The file's name and size with a hash of its first and last MiB: the same model copied to
    another data dir is the same key; another model, or a rewritten file, is not."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}\0{size}\0".encode())
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        digest.update(fh.read(1 << 20))
    return digest.hexdigest()


def _read_weights(directory: Path, gguf_file: str) -> tuple[Any, Any]:
    """The tokenizer and the eval-mode model of `directory/gguf_file`, read once per process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = _file_key(directory / gguf_file)
    with _WEIGHTS_LOCK:
        found = _WEIGHTS.get(key)
        if found is None:
            tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                directory, gguf_file=gguf_file, local_files_only=True
            )
            model.eval()
            found = _WEIGHTS[key] = (tokenizer, model)
        return found


class LocalLLM:
    """A packaged GGUF model (SmolLM2-135M-Instruct unless `model` says otherwise) served in-process
    on OpenVINO GenAI, or on transformers (`runtime`).

    `load()` reads the model once (call it at start-up; otherwise the first request loads it).
    Generation runs in a worker thread, one at a time (one model, CPU), so the event loop stays
    free; `stream()` yields tokens as the model produces them. temperature 0 means greedy decoding.
    """

    model_name = "SmolLM2-135M-Instruct"
    context_window = 8192

    def __init__(
        self,
        model_dir: str | None = None,
        gguf_file: str | None = None,
        default_max_tokens: int = 256,
        default_temperature: float = 0.0,
        *,
        num_threads: int | None = None,
        context_window: int | None = None,
        repetition_penalty: float = 1.0,
        model: str = "smollm2",
        models_dir: Path | None = None,
        runtime: str = "auto",
    ) -> None:
        if model not in LOCAL_MODELS:
            raise ValueError(f"unknown local model {model!r}; one of {', '.join(LOCAL_MODELS)}")
        self.model = LOCAL_MODELS[model]
        self.model_name = self.model.model_name
        self.models_dir = models_dir or Path("data/models")
        self.repetition_penalty = repetition_penalty
        if context_window is not None:
            self.context_window = min(context_window, type(self).context_window)
        self.model_dir = model_dir
        self.gguf_file = gguf_file or self.model.gguf_file
        self.default_max_tokens = default_max_tokens
        self.default_temperature = default_temperature
        self.num_threads = num_threads or _default_threads()
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown local runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
        self.requested_runtime = runtime
        self.runtime: str | None = None  # what serves it, once loaded: "openvino" or "transformers"
        self.load_seconds: float | None = None
        self._engine: OpenVINOEngine | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        # A copy of the tokenizer for counting prompts on other threads while the worker generates.
        self._counter: Any = None
        self._count_lock = threading.Lock()
        self._load_lock = threading.Lock()
        # One worker serializes generations (one model, CPU); waiting requests queue here instead of
        # each holding a thread of the loop's default executor.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-llm-generate")
        # The stop flag of every generation running or queued: aclose() raises them all.
        self._stops: set[threading.Event] = set()
        self._closed = False

    @property
    def _provider(self) -> str:
        return f"local {self.model_name} ({self.gguf_file})"

    def load(self) -> None:
        """Load tokenizer and model once; safe to call from several threads. Blocking (seconds)."""
        with self._load_lock:
            if self._model is not None:
                return
            started = time.perf_counter()
            # No network at run time: the GGUF file is local, and nothing may fetch weights.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import torch

            model: Any = None
            directory = Path(self.model_dir) if self.model_dir else materialise(self.model, self.models_dir)
            gguf = directory / self.gguf_file
            if not gguf.is_file():
                raise LLMError(f"model file {gguf} not found", provider=self._provider)
            if self.requested_runtime != "transformers":
                try:
                    converted = prepare(gguf, self.models_dir, _file_key(gguf))
                    self._engine = OpenVINOEngine(converted, self.num_threads)
                    self.runtime = "openvino"
                except (ConversionError, ImportError, RuntimeError) as exc:
                    if self.requested_runtime == "openvino":
                        raise LLMError(
                            f"OpenVINO cannot serve {gguf.name}: {exc}", provider=self._provider
                        ) from exc
                    logger.warning(
                        "%s: OpenVINO failed (%s); falling back to transformers", self._provider, exc
                    )
            if self._engine is None:
                torch.set_num_threads(self.num_threads)
                tokenizer, model = _read_weights(directory, self.gguf_file)
                # Each instance has its own tokenizers (a fast tokenizer is not safe across threads).
                self._counter = copy.deepcopy(tokenizer)
                self._tokenizer = copy.deepcopy(tokenizer)
                self.runtime = "transformers"
            self._model = model if self._engine is None else self._engine
            self.load_seconds = time.perf_counter() - started
            logger.info(
                "loaded %s on %s in %.1fs (%d threads)",
                self.model_name,
                self.runtime,
                self.load_seconds,
                self.num_threads,
            )

    def count_prompt_tokens(self, messages: Messages) -> int:
        """Exact prompt length in tokens, chat template included (an estimate before `load`)."""
        if self._engine is not None:
            return len(self._engine.chat_ids(messages))
        if self._counter is None:
            return approx_prompt_tokens(messages)
        with self._count_lock:
            encoded = self._counter.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )
        return len(encoded["input_ids"])

    def _prepare(
        self, messages: Messages, max_tokens: int | None, temperature: float | None
    ) -> dict[str, Any]:
        """Chat-template the messages and build generate() kwargs.

        Callers fit the prompt to the window (`ChatService` trims history, then sources). An over-long
        prompt that still arrives is cut here as a last resort, from the middle: the system message at
        the start and the end (the question, the generation prompt) are always kept.
        """
        max_new = max_tokens if max_tokens is not None else self.default_max_tokens
        max_new = max(1, min(max_new, self.context_window // 2))
        temp = temperature if temperature is not None else self.default_temperature
        encoded = self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        input_ids, attention = encoded["input_ids"], encoded["attention_mask"]
        room = self.context_window - max_new
        if input_ids.shape[1] > room:
            import torch

            head = self._system_prefix_tokens(messages, room)
            tail = room - head
            logger.warning(
                "%s: prompt of %d tokens over the %d left for it: cut from the middle",
                self._provider,
                input_ids.shape[1],
                room,
            )
            input_ids = torch.cat([input_ids[:, :head], input_ids[:, -tail:]], dim=1)
            attention = torch.cat([attention[:, :head], attention[:, -tail:]], dim=1)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "max_new_tokens": max_new,
            "pad_token_id": (
                self._tokenizer.pad_token_id
                if self._tokenizer.pad_token_id is not None
                else self._tokenizer.eos_token_id
            ),
        }
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if temp > 0:
            kwargs.update(do_sample=True, temperature=temp)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _system_prefix_tokens(self, messages: Messages, room: int) -> int:
        """How many leading prompt tokens hold the system message(s): kept whole by a last-resort cut
        (at most half the room, so the question at the end always has space)."""
        system = [m for m in messages[:1] if m.get("role") == "system"]
        if not system:
            return 0
        ids = self._tokenizer.apply_chat_template(system, tokenize=True, return_dict=True)["input_ids"]
        return min(len(ids), room // 2)

    def _generate(
        self,
        messages: Messages,
        max_tokens: int | None,
        temperature: float | None,
        stop: threading.Event,
        emit: Callable[[str], None] | None = None,
    ) -> tuple[str, Usage, str]:
        """Blocking generation, run on the executor's thread: (text, usage, finish reason); `emit`
        gets the text as it grows, piece by piece."""
        if stop.is_set():  # the caller left (or the model was closed) while this waited its turn
            return "", Usage(0, 0), "cancelled"
        if self._engine is not None:
            return self._generate_openvino(self._engine, messages, max_tokens, temperature, stop, emit)
        return self._generate_transformers(messages, max_tokens, temperature, stop, emit)

    def _budget(self, max_tokens: int | None, temperature: float | None) -> tuple[int, float]:
        max_new = max_tokens if max_tokens is not None else self.default_max_tokens
        max_new = max(1, min(max_new, self.context_window // 2))
        return max_new, temperature if temperature is not None else self.default_temperature

    def _prompt_ids(self, engine: OpenVINOEngine, messages: Messages, max_new: int) -> list[int]:
        """The prompt's token ids, cut from the middle as a last resort as `_prepare` does."""
        ids = engine.chat_ids(messages)
        room = self.context_window - max_new
        if len(ids) <= room:
            return ids
        system = messages[:1] if messages and messages[0].get("role") == "system" else []
        head = min(len(engine.chat_ids(system)) if system else 0, room // 2)
        logger.warning(
            "%s: prompt of %d tokens over the %d left for it: cut from the middle",
            self._provider,
            len(ids),
            room,
        )
        return ids[:head] + ids[len(ids) - (room - head) :]

    def _generate_openvino(
        self,
        engine: OpenVINOEngine,
        messages: Messages,
        max_tokens: int | None,
        temperature: float | None,
        stop: threading.Event,
        emit: Callable[[str], None] | None,
    ) -> tuple[str, Usage, str]:
        max_new, temp = self._budget(max_tokens, temperature)
        ids = self._prompt_ids(engine, messages, max_new)
        prompt_len = len(ids)
        guard = _Runaway(prompt_len, engine.decode)
        produced: list[int] = []
        shown = ""

        def on_token(token: int) -> bool:
            nonlocal shown
            if token in engine.stop_token_ids:
                return True
            produced.append(token)
            if emit is not None:
                text = engine.decode(produced)
                # A token may end inside a multi-byte character: wait for the rest of it.
                if not text.endswith("\ufffd") and text.startswith(shown) and len(text) > len(shown):
                    emit(text[len(shown) :])
                    shown = text
            return stop.is_set() or guard.check(ids + produced)

        out = engine.generate(
            ids,
            max_new_tokens=max_new,
            temperature=temp,
            repetition_penalty=self.repetition_penalty,
            on_token=on_token,
        )
        hit_eos = bool(out) and out[-1] in engine.stop_token_ids
        new_ids = produced
        finish = "stop" if hit_eos or guard.reason or len(new_ids) < max_new else "length"
        if guard.reason == "loop":  # keep one copy of what repeated
            new_ids = new_ids[: len(new_ids) - 2 * guard.period]
        if stop.is_set():
            finish = "cancelled"
        text = engine.decode(new_ids)
        if emit is not None and text.startswith(shown) and len(text) > len(shown) and finish != "cancelled":
            emit(text[len(shown) :])
        return text, Usage(prompt_len, len(produced)), finish

    def _generate_transformers(
        self,
        messages: Messages,
        max_tokens: int | None,
        temperature: float | None,
        stop: threading.Event,
        emit: Callable[[str], None] | None,
    ) -> tuple[str, Usage, str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        class _StopWhenSet(StoppingCriteria):
            # Lets a cancelled request (client gone) free the model at the next token.
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        streamer = None
        if emit is not None:
            sink: Callable[[str], None] = emit

            class _EmitStreamer(TextStreamer):
                def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                    if text:
                        sink(text)

            streamer = _EmitStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self._prepare(messages, max_tokens, temperature)
        prompt_len = kwargs["input_ids"].shape[1]
        tokenizer = self._tokenizer
        guard = _Runaway(prompt_len, lambda ids: tokenizer.decode(ids, skip_special_tokens=True))

        class _StopRunaway(StoppingCriteria):
            # A loop ("The policy applies to all employees..." x12) or the next turn of the transcript.
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return torch.full((input_ids.shape[0],), guard.check(input_ids[0].tolist()), dtype=torch.bool)

        with torch.inference_mode():
            output = self._model.generate(
                **kwargs,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_StopWhenSet(), _StopRunaway()]),
            )
        new_ids = output[0, prompt_len:]
        hit_eos = len(new_ids) > 0 and int(new_ids[-1]) == self._tokenizer.eos_token_id
        finish = "stop" if hit_eos or guard.reason or len(new_ids) < kwargs["max_new_tokens"] else "length"
        if guard.reason == "loop":  # keep one copy of what repeated
            new_ids = new_ids[: len(new_ids) - 2 * guard.period]
        if stop.is_set():  # cut short: not an answer
            finish = "cancelled"
        text = self._tokenizer.decode(new_ids, skip_special_tokens=True)
        return text, Usage(prompt_len, len(new_ids)), finish

    async def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        try:
            await asyncio.to_thread(self.load)
        except LLMError:
            raise
        except Exception as exc:
            raise LLMError(f"loading failed: {exc!r}", provider=self._provider) from exc

    def _new_stop(self) -> threading.Event:
        """A stop flag for one generation, raised by its caller leaving or by `aclose`."""
        if self._closed:
            raise LLMError("closed", provider=self._provider)
        stop = threading.Event()
        self._stops.add(stop)
        return stop

    async def complete(
        self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> Completion:
        """Generate the whole answer in a worker thread. Cancelling the call stops the generation at
        its next token (or drops it from the queue if it has not started)."""
        await self._ensure_loaded()
        stop = self._new_stop()
        loop = asyncio.get_running_loop()
        try:
            text, usage, finish = await loop.run_in_executor(
                self._executor, self._generate, messages, max_tokens, temperature, stop
            )
        except asyncio.CancelledError:
            stop.set()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # Not our caller's cancellation: aclose() dropped the queued generation.
            raise LLMError("closed while the generation waited its turn", provider=self._provider) from None
        except Exception as exc:
            raise LLMError(f"generation failed: {exc!r}", provider=self._provider) from exc
        finally:
            self._stops.discard(stop)
        if finish == "cancelled":
            raise LLMError("closed during the generation", provider=self._provider)
        return Completion(text=text, model=self.model_name, usage=usage, finish_reason=finish)

    async def stream(
        self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> AsyncIterator[LLMDelta]:
        """Yield text as tokens are generated; a generation thread feeds an asyncio queue."""
        await self._ensure_loaded()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = self._new_stop()

        def post(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is reading any more
                stop.set()

        def emit(text: str) -> None:
            # Each piece is handed to the loop: a blocking queue would park a thread per waiting reader.
            if text and not stop.is_set():
                post(text)

        def run() -> None:
            try:
                result: Any = self._generate(messages, max_tokens, temperature, stop, emit)
            except BaseException as exc:  # handed to the reader, which raises it as LLMError
                result = exc
            post((_DONE, result))

        try:
            future = self._executor.submit(run)
        except RuntimeError as exc:  # executor shut down by aclose()
            self._stops.discard(stop)
            raise LLMError("closed", provider=self._provider) from exc
        # A queued run that aclose() cancels never posts its end: post it for it.
        future.add_done_callback(
            lambda f: post((_DONE, LLMError("closed", provider=self._provider))) if f.cancelled() else None
        )
        try:
            while True:
                item = await queue.get()
                if isinstance(item, str):
                    yield LLMDelta(text=item, model=self.model_name)
                    continue
                result = item[1]
                if isinstance(result, LLMError):
                    raise result
                if isinstance(result, BaseException):
                    raise LLMError(f"generation failed: {result!r}", provider=self._provider) from result
                if result[2] == "cancelled":
                    raise LLMError("closed during the generation", provider=self._provider)
                yield LLMDelta(text="", usage=result[1], model=self.model_name, finish_reason=result[2])
                return
        finally:
            # Reader gone (finished, cancelled or closed early): stop the thread at its next token.
            stop.set()
            self._stops.discard(stop)

    async def health(self) -> bool:
        """True once the model is loaded."""
        return self._model is not None

    async def aclose(self) -> None:
        """Stop the running generation at its next token, drop the queued ones, end the worker thread
        (so a shutting-down process does not wait for an answer nobody will read)."""
        self._closed = True
        for stop in list(self._stops):
            stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
