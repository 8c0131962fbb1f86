"""A scripted OpenAI-compatible HTTP server on loopback, for tests, benchmarks and demos.

Real clients (`OpenAICompatibleLLM`, the `openai` client) talk real HTTP to it, streaming included:

    with ScriptedOpenAIServer() as server:
        server.enqueue_error(429)
        server.enqueue_text("hello world")
        llm = OpenAICompatibleLLM(server.base_url, "k", server.model, ...)

Each chat request takes the next scripted step (a text, an HTTP error, a delay); with the queue
empty it answers `default_reply` (a string, or a callable(messages) -> str). Tokens are
whitespace words. Stand-alone, for benchmarks:

    ragserver dev scripted-llm --port 8001 [--instant] [--reply TEXT]
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ingest.embedder import hashed_embedding

Reply = str | Callable[[list[dict[str, Any]]], str]


@dataclass
class Step:
    """One scripted answer: wait `delay_s`, then fail with `status` or answer `text` (None = default)."""

    text: str | None = None
    status: int | None = None
    delay_s: float = 0.0
    # Streaming only: drop the connection after this many text chunks.
    drop_after: int | None = None


class ScriptedOpenAIServer:
    """uvicorn in a background thread on a free 127.0.0.1 port; a context manager."""

    def __init__(
        self,
        default_reply: Reply = "This is a scripted reply.",
        *,
        model: str = "scripted-model",
        embedding_dim: int = 384,
        word_delay_s: float = 0.0,
        port: int = 0,
        record_requests: bool = True,
    ) -> None:
        self.default_reply = default_reply
        self.model = model
        self.embedding_dim = embedding_dim
        self.word_delay_s = word_delay_s
        # Off for long benchmark runs, where the list would only grow.
        self.record_requests = record_requests
        self.requests: list[dict[str, Any]] = []
        self._steps: deque[Step] = deque()
        self._lock = threading.Lock()
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # -- scripting -------------------------------------------------------------------------------
    def enqueue(self, step: Step) -> None:
        with self._lock:
            self._steps.append(step)

    def enqueue_text(self, text: str, *, delay_s: float = 0.0, drop_after: int | None = None) -> None:
        self.enqueue(Step(text=text, delay_s=delay_s, drop_after=drop_after))

    def enqueue_error(self, status: int, *, delay_s: float = 0.0) -> None:
        self.enqueue(Step(status=status, delay_s=delay_s))

    def enqueue_delay(self, seconds: float, text: str | None = None) -> None:
        """The next request waits `seconds` before its answer (the default reply unless `text`)."""
        self.enqueue(Step(text=text, delay_s=seconds))

    def _next_step(self) -> Step:
        with self._lock:
            return self._steps.popleft() if self._steps else Step()

    def _record(self, body: dict[str, Any]) -> None:
        if self.record_requests:
            with self._lock:
                self.requests.append(body)

    def _reply(self, messages: list[dict[str, Any]]) -> str:
        reply = self.default_reply
        return reply(messages) if callable(reply) else reply

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def start(self) -> ScriptedOpenAIServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="scripted-openai", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("scripted OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            # Scripted delays may still be sleeping; don't wait for them.
            self._server.should_exit = self._server.force_exit = True
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self) -> None:
        """Block until Ctrl-C or the server thread ends (after `start`); the server is stopped either way."""
        try:
            # A sleep loop rather than join(): the main thread must stay free to take KeyboardInterrupt.
            while self._thread is not None and self._thread.is_alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # -- HTTP ------------------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "scripted"}],
            }

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            self._record(body)
            step = self._next_step()
            if step.delay_s:
                await asyncio.sleep(step.delay_s)
            if step.status is not None:
                return _error(step.status)
            messages = body.get("messages", [])
            text = step.text if step.text is not None else self._reply(messages)
            words = re.findall(r"\s*\S+", text)
            max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
            finish = "stop"
            if max_tokens is not None and len(words) > max_tokens:
                words, finish = words[:max_tokens], "length"
            usage = {
                "prompt_tokens": sum(len(str(m.get("content") or "").split()) for m in messages),
                "completion_tokens": len(words),
            }
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                chunks = self._chunks(words, finish, usage if include_usage else None, step)
                return StreamingResponse(chunks, media_type="text/event-stream")
            if self.word_delay_s:
                await asyncio.sleep(self.word_delay_s * len(words))
            return JSONResponse(
                {
                    "id": "chatcmpl-scripted",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": self.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(words)},
                            "finish_reason": finish,
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                }
            )

        @app.post("/v1/embeddings")
        async def embeddings(request: Request) -> dict[str, Any]:
            body = await request.json()
            self._record(body)
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            dim = int(body.get("dimensions") or self.embedding_dim)
            data = []
            for i, text in enumerate(inputs):
                vector = hashed_embedding(str(text), dim)
                if body.get("encoding_format") == "base64":
                    # The openai client asks for base64 float32 unless told otherwise.
                    encoded: Any = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
                else:
                    encoded = vector
                data.append({"object": "embedding", "index": i, "embedding": encoded})
            tokens = sum(len(str(t).split()) for t in inputs)
            return {
                "object": "list",
                "data": data,
                "model": body.get("model", self.model),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }

        return app

    async def _chunks(
        self, words: list[str], finish: str, usage: dict[str, int] | None, step: Step
    ) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            payload = {
                "id": "chatcmpl-stream",
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
            }
            if usage is not None:
                payload["usage"] = None
            return f"data: {json.dumps(payload)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        for i, word in enumerate(words):
            if step.drop_after is not None and i >= step.drop_after:
                raise ConnectionAbortedError("scripted drop")  # uvicorn cuts the response mid-body
            if self.word_delay_s:
                await asyncio.sleep(self.word_delay_s)
            yield chunk({"content": word})
        yield chunk({}, finish)
        if usage is not None:
            payload = {
                "id": "chatcmpl-stream",
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "choices": [],
                "usage": usage,
            }
            yield f"data: {json.dumps(payload)}\n\n"
        yield "data: [DONE]\n\n"


def _error(status: int) -> JSONResponse:
    kinds = {429: "rate_limit_exceeded", 500: "server_error", 503: "service_unavailable"}
    body = {
        "error": {"message": f"scripted error {status}", "type": kinds.get(status, "error"), "code": status}
    }
    return JSONResponse(body, status_code=status)
