"""The `LLM` contract against the in-process ScriptedLLM, the OpenAI-compatible provider over real HTTP
to the scripted server, and the local provider with the real SmolLM2-135M (CPU). Each is built by
`build_llm` from settings, as the server builds it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.devtools.scripted_llm import ScriptedOpenAIServer
from app.llm.base import LLM
from app.llm.factory import build_llm
from app.llm.local_provider import LocalLLM
from app.llm.scripted_provider import ScriptedLLM
from app.settings import LLMSettings, Settings
from tests.contract.llm_contract import LLMContract, Subject

SENT_FIELDS = ("messages", "max_tokens", "temperature")


def scripted_subject(llm: LLM, script: ScriptedLLM | ScriptedOpenAIServer, **hooks: Any) -> Subject:
    """A Subject steered through `script`: ScriptedLLM and the scripted server take the same calls.
    `llm` times out within a second (its deadline or read timeout): a 30 s scripted delay is the stall."""

    def fail() -> LLM:
        script.enqueue_error(500)
        return llm

    def stall() -> LLM:
        script.enqueue_delay(30)
        return llm

    def say(text: str, drop_after: int | None = None) -> None:
        script.enqueue_text(text, drop_after=drop_after)

    return Subject(llm, fail=fail, say=say, stall=stall, **hooks)


@pytest.mark.unit
class TestScriptedLLM(LLMContract):
    @pytest.fixture
    async def subject(self) -> AsyncIterator[Subject]:
        llm = build_llm(LLMSettings(provider="scripted", deadline_s=0.5))
        assert isinstance(llm, ScriptedLLM)
        yield scripted_subject(
            llm,
            llm,
            sent=lambda: [{f: getattr(r, f) for f in SENT_FIELDS} for r in llm.requests],
            released=lambda: llm.in_flight == 0,
        )
        await llm.aclose()


@pytest.mark.unit
class TestOpenAICompatibleOverHTTP(LLMContract):
    @pytest.fixture
    def server(self) -> Iterator[ScriptedOpenAIServer]:
        with ScriptedOpenAIServer() as srv:
            yield srv

    @pytest.fixture
    async def subject(self, server: ScriptedOpenAIServer) -> AsyncIterator[Subject]:
        # The settings tests/api/conftest.py points the app at the scripted server with (no retries),
        # and a short read timeout.
        settings = LLMSettings(
            provider="openai", base_url=server.base_url, model=server.model, max_retries=0, timeout_s=0.5
        )
        llm = build_llm(settings)
        yield scripted_subject(
            llm, server, sent=lambda: [{f: r[f] for f in SENT_FIELDS} for r in server.requests]
        )
        await llm.aclose()


@pytest.fixture(scope="class")
def smollm2() -> Iterator[LocalLLM]:
    """The local provider as the tests configure it (RAGSERVER_LLM__LOCAL_MODEL=smollm2), loaded once."""
    configured = Settings(_env_file=None)  # type: ignore[call-arg]
    settings = configured.llm
    assert settings.local_model == "smollm2"
    llm = build_llm(
        settings.model_copy(update={"provider": "local", "max_tokens": 24}), configured.models_dir
    )
    assert isinstance(llm, LocalLLM)
    llm.load()
    yield llm
    asyncio.run(llm.aclose())  # ends its worker thread


@pytest.mark.slow
@pytest.mark.integration
class TestLocalSmolLM2(LLMContract):
    cannot = {
        "script": (
            "a real model's words cannot be chosen; the tests that need no script check the shape of its "
            "answers, and that a greedy stream and complete agree"
        ),
        "time_out": (
            "LocalLLM has no time limit of its own (it reads neither llm.timeout_s nor llm.deadline_s): a "
            "generation ends at max_tokens, at the end of its answer, or when its caller leaves"
        ),
        "record": (
            "there is no upstream to receive the request; what reaches the model is checked in "
            "tests/integration/test_local_llm.py"
        ),
    }

    @pytest.fixture
    def subject(self, smollm2: LocalLLM, tmp_path: Path) -> Subject:
        def fail() -> LLM:
            # The local model's upstream is its GGUF file: a corrupt one fails the load, with a raw
            # ValueError from transformers that must reach the caller as LLMError.
            (tmp_path / smollm2.gguf_file).write_bytes(b"not a gguf file" * 64)
            return LocalLLM(model_dir=str(tmp_path), model="smollm2", models_dir=tmp_path / "models")

        return Subject(smollm2, fail=fail)
