"""ChatService on the fake graph (tests/unit/fakes.py): retrieval over the hashing embedder and BM25, the
prompt the ScriptedLLM receives, citations, streaming, history per conversation, errors, limits and
traces; and, in a subprocess, that the whole fake graph runs with no model runtime and no network."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from app.auth.principal import Principal
from app.container import Container
from app.llm.base import LLMError
from app.llm.scripted_provider import ScriptedLLM
from app.services.answer_text import tidy
from app.services.chat_service import ConversationNotFound
from app.services.chat_types import (
    ChatEvent,
    ChatQuery,
    ChatResult,
    CitationsEvent,
    DoneEvent,
    StartEvent,
    TokenEvent,
)
from app.services.traces import TraceNotFound
from ingest.errors import describe
from ingest.filters import FilterError
from ingest.vector_index import CollectionNotFound
from tests.unit.fakes import ANONYMOUS, answerability_model, fake_container, fresh_llm, ingest, scripted_llm

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="module")]

ROOT = Path(__file__).resolve().parents[2]
CORPUS = {
    "etna.txt": b"Mount Etna is an active volcano on the east coast of Sicily.",
    "penguins.txt": b"Emperor penguins breed during the Antarctic winter.",
    "rome.txt": b"Rome is the capital of Italy and stands on the river Tiber.",
}
OTHER_TENANT = Principal(tenant="t2", role="admin", key_id="k-t2")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def container(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Container]:
    """One graph and one ingested collection for the module (the tests only read it)."""
    async with fake_container(tmp_path_factory.mktemp("chat")) as built:
        job = await ingest(built, "kb", CORPUS)
        assert job.status == "succeeded"
        yield built


@pytest.fixture
def llm(container: Container) -> ScriptedLLM:
    """The container's ScriptedLLM with no request recorded yet."""
    return fresh_llm(container)


@pytest.fixture
def doc_ids(container: Container) -> dict[str, str]:
    """The corpus's document ids by file name."""
    return {r.source: r.doc_id for r in container.store.iter_documents("kb")}


async def ask(
    container: Container, message: str, principal: Principal = ANONYMOUS, **query: object
) -> ChatResult:
    return await container.chat.chat(
        ChatQuery(message=message, collection="kb", **query), principal=principal
    )  # type: ignore[arg-type]


async def stream(container: Container, message: str) -> list[ChatEvent]:
    return [
        e
        async for e in container.chat.stream(ChatQuery(message=message, collection="kb"), principal=ANONYMOUS)
    ]


async def test_the_answer_cites_the_retrieved_chunk_it_marks(
    container: Container, llm: ScriptedLLM, doc_ids: dict[str, str]
) -> None:
    llm.enqueue_text("Mount Etna is in Sicily [1].")
    result = await ask(container, "Where is Mount Etna?")
    (request,) = llm.requests
    assert result.answer == "Mount Etna is in Sicily [1]."
    assert [c.document_id for c in result.contexts] == [
        doc_ids[n] for n in ("etna.txt", "rome.txt", "penguins.txt")
    ]
    assert [(c.n, c.document_id, c.text) for c in result.citations] == [
        (1, doc_ids["etna.txt"], CORPUS["etna.txt"].decode())
    ]
    assert f"[1] etna (etna.txt)\n{CORPUS['etna.txt'].decode()}" in request.messages[-1]["content"]
    assert (request.max_tokens, request.temperature, request.stream) == (256, 0.0, False)
    prompt_tokens = llm.count_prompt_tokens(request.messages)
    assert result.usage == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 6,
        "total_tokens": prompt_tokens + 6,
    }
    assert (result.model, result.finish_reason, result.collection_version) == ("scripted-model", "stop", "v1")


async def test_only_a_yes_no_question_asks_the_model_to_start_with_yes_or_no(
    container: Container, llm: ScriptedLLM
) -> None:
    llm.enqueue_text("Yes, Mount Etna is in Sicily [1].")
    llm.enqueue_text("Mount Etna is in Sicily [1].")
    await ask(container, "Is Mount Etna in Sicily?")
    await ask(container, "Where is Mount Etna?")
    told, plain = (r.messages[-1]["content"] for r in llm.requests)
    assert told.endswith("Start your answer with Yes or No, then say why in one sentence.")
    assert "Yes or No" not in plain and plain.endswith("cite the source numbers.")


async def test_a_streamed_answer_is_its_deltas_then_its_citations_then_done_with_usage(
    container: Container, llm: ScriptedLLM, doc_ids: dict[str, str]
) -> None:
    llm.enqueue_text("Emperor penguins breed in the Antarctic winter [1].")
    start, *tokens, cited, done = await stream(container, "When do emperor penguins breed?")
    assert isinstance(start, StartEvent) and isinstance(cited, CitationsEvent) and isinstance(done, DoneEvent)
    assert all(isinstance(t, TokenEvent) for t in tokens)
    result = done.result
    assert "".join(t.text for t in tokens if isinstance(t, TokenEvent)) == result.answer
    assert (result.answer, len(tokens)) == ("Emperor penguins breed in the Antarctic winter [1].", 8)
    assert (start.response_id, start.conversation_id) == (result.response_id, result.conversation_id)
    assert cited.citations == result.citations
    assert [c.document_id for c in result.citations] == [doc_ids["penguins.txt"]]
    (request,) = llm.requests
    prompt_tokens = llm.count_prompt_tokens(request.messages)
    assert request.stream is True
    assert result.usage == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 8,
        "total_tokens": prompt_tokens + 8,
    }


async def test_history_is_kept_per_conversation_and_a_follow_up_sees_it(
    container: Container, llm: ScriptedLLM
) -> None:
    llm.enqueue_text("Mount Etna is in Sicily [1].")
    first = await ask(container, "Where is Mount Etna?")
    llm.enqueue_text("How high is Mount Etna?")  # the condense step: the follow-up as a search query
    llm.enqueue_text("It is about 3,300 metres high [1].")
    follow_up = await ask(container, "How high is it?", conversation_id=first.conversation_id)
    llm.enqueue_text("Rome is the capital of Italy [1].")
    unrelated = await ask(container, "What is the capital of Italy?")
    _, condense, answer, fresh = llm.requests
    transcript = "User: Where is Mount Etna?\nAssistant: Mount Etna is in Sicily [1]."
    assert (first.history_saved, follow_up.conversation_id) == (True, first.conversation_id)
    assert unrelated.conversation_id != first.conversation_id
    assert (condense.max_tokens, follow_up.query) == (64, "How high is Mount Etna?")
    assert (
        f"Conversation:\n{transcript}\n\nFollow-up question: How high is it?"
        in condense.messages[-1]["content"]
    )
    assert (
        f"Conversation so far:\n{transcript}\n\nQuestion: How high is it?" in answer.messages[-1]["content"]
    )
    assert "Conversation so far" not in fresh.messages[-1]["content"]
    turns = await container.chat.get_conversation(first.conversation_id, principal=ANONYMOUS)
    assert [(t.role, t.content) for t in turns] == [
        ("user", "Where is Mount Etna?"),
        ("assistant", "Mount Etna is in Sicily [1]."),
        ("user", "How high is it?"),
        ("assistant", "It is about 3,300 metres high [1]."),
    ]
    with pytest.raises(ConversationNotFound):  # the same id names another tenant's (empty) conversation
        await container.chat.get_conversation(first.conversation_id, principal=OTHER_TENANT)


async def test_an_llm_failure_is_an_llm_error_the_api_answers_with_502_or_504(
    container: Container, llm: ScriptedLLM
) -> None:
    llm.enqueue_error(503)
    llm.enqueue_error(timed_out=True)
    with pytest.raises(LLMError) as refused:
        await ask(container, "Where is Mount Etna?")
    with pytest.raises(LLMError) as late:
        await ask(container, "Where is Mount Etna?")
    unavailable, timed_out = describe(refused.value), describe(late.value)
    assert unavailable is not None and timed_out is not None
    assert (unavailable.status, unavailable.code, unavailable.message) == (
        502,
        "llm_unavailable",
        "the language model is unavailable",
    )
    assert (timed_out.status, timed_out.code, timed_out.message) == (
        504,
        "llm_timeout",
        "the language model did not answer in time",
    )
    assert [r.outcome for r in llm.requests] == ["failed", "failed"]


async def test_a_stream_that_drops_mid_answer_raises_and_keeps_nothing(
    container: Container, llm: ScriptedLLM
) -> None:
    llm.enqueue_text("Mount Etna is in Sicily [1].", drop_after=2)
    events: list[ChatEvent] = []
    with pytest.raises(LLMError, match="dropped mid-stream"):
        async for event in container.chat.stream(
            ChatQuery(message="Where is Etna?", collection="kb"), principal=ANONYMOUS
        ):
            events.append(event)
    start = events[0]
    assert [type(e) for e in events] == [StartEvent, TokenEvent, TokenEvent]
    assert isinstance(start, StartEvent)
    with pytest.raises(ConversationNotFound):
        await container.chat.get_conversation(start.conversation_id, principal=ANONYMOUS)
    with pytest.raises(TraceNotFound):
        await container.traces.get(start.response_id, principal=ANONYMOUS)


async def test_a_filter_over_the_limits_is_refused_before_anything_else(
    container: Container, llm: ScriptedLLM
) -> None:
    too_many = {f"key{i}": "value" for i in range(container.settings.limits.max_filter_keys + 1)}
    searches = container.metrics.registry.get_sample_value(
        "ragserver_retrieval_seconds_count", {"mode": "hybrid"}
    )
    # Refused before the collection is even looked up: one that does not exist gets the same answer.
    for collection in ("kb", "no-such-collection"):
        with pytest.raises(FilterError, match="limits.max_filter_keys") as refused:
            await container.chat.chat(
                ChatQuery(message="Where is Mount Etna?", collection=collection, filters=too_many),
                principal=ANONYMOUS,
            )
        error = describe(refused.value)
        assert error is not None and (error.status, error.code) == (400, "invalid_filter")
    assert (
        container.metrics.registry.get_sample_value("ragserver_retrieval_seconds_count", {"mode": "hybrid"})
        == searches
    )
    assert llm.requests == []


async def test_a_collection_that_does_not_exist_is_not_found(container: Container, llm: ScriptedLLM) -> None:
    with pytest.raises(CollectionNotFound) as missing:
        await container.chat.chat(ChatQuery(message="Where is Etna?", collection="nope"), principal=ANONYMOUS)
    with pytest.raises(CollectionNotFound):  # another tenant's "kb" is not this tenant's
        await ask(container, "Where is Etna?", principal=OTHER_TENANT)
    error = describe(missing.value)
    assert error is not None and (error.status, error.code) == (404, "collection_not_found")
    assert llm.requests == []


async def test_every_answer_is_traced_with_how_it_was_made(container: Container, llm: ScriptedLLM) -> None:
    llm.enqueue_text("Rome is the capital of Italy [1].")
    result = await ask(container, "What is the capital of Italy?", max_tokens=64)
    trace = await container.traces.get(result.response_id, principal=ANONYMOUS)
    assert (trace.api, trace.tenant, trace.collection, trace.conversation_id) == (
        "chat",
        "default",
        "kb",
        result.conversation_id,
    )
    assert (trace.question, trace.search_query, trace.answer) == (
        "What is the capital of Italy?",
        "What is the capital of Italy?",
        "Rome is the capital of Italy [1].",
    )
    assert (trace.prompt, trace.model, trace.outcome, trace.collection_version) == (
        "answer@v6",
        "scripted-model",
        "answered",
        "v1",
    )
    assert [(c["rank"], c["chunk_id"]) for c in trace.chunks] == [
        (i, c.chunk_id) for i, c in enumerate(result.contexts, start=1)
    ]
    assert [c["chunk_id"] for c in trace.citations] == [c.chunk_id for c in result.citations]
    # The model's registry name (`trace.model`: what the endpoint answered as), and its estimated cost.
    assert trace.params == {"max_tokens": 64, "temperature": 0.0, "model": "scripted-model"}
    assert (trace.cost, trace.experiment, trace.arm) == (0.0, None, None)
    assert trace.usage == {k: result.usage[k] for k in ("prompt_tokens", "completion_tokens")}
    with pytest.raises(TraceNotFound):
        await container.traces.get(result.response_id, principal=OTHER_TENANT)


# Runs the fake graph end to end in a fresh interpreter and reports what it imported and which network
# calls it made (audit hooks see every socket call, whichever library makes it). urllib3 binds a probe
# socket to [::1]:0 when imported, to learn whether IPv6 works: that talks to nobody, so it is not counted.
FAKE_GRAPH_RUN = """
import asyncio, json, sys, tempfile
from pathlib import Path

network = []
CALLS = {"socket.connect", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo", "socket.gethostbyname"}
sys.addaudithook(lambda event, args: network.append(event) if event in CALLS else None)

from app.services.chat_types import ChatQuery
from tests.unit.fakes import ANONYMOUS, fake_container, ingest


async def main():
    async with fake_container(Path(tempfile.mkdtemp())) as c:
        job = await ingest(c, "kb", {"etna.txt": b"Mount Etna is a volcano in Sicily."})
        query = ChatQuery(message="Where is Etna?", collection="kb")
        answer = await c.chat.chat(query, principal=ANONYMOUS)
        streamed = [e async for e in c.chat.stream(query, principal=ANONYMOUS)]
        return [job.status, len(answer.contexts), type(streamed[-1]).__name__]


ran = asyncio.run(main())
heavy = ["torch", "chromadb", "sentence_transformers", "transformers", "onnxruntime", "llama_cpp"]
print(json.dumps({"ran": ran, "imported": [m for m in heavy if m in sys.modules], "network": network}))
"""


async def test_the_fake_graph_runs_without_a_model_runtime_or_the_network() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FAKE_GRAPH_RUN,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()[-2000:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report == {"ran": ["succeeded", 1, "DoneEvent"], "imported": [], "network": []}


# -- what the new user saw (issue 23): prompt leaks, disclaimers, numbering, abstention -----------------


async def test_instruction_echoes_never_reach_the_user_streamed_or_not(
    container: Container, llm: ScriptedLLM, doc_ids: dict[str, str]
) -> None:
    leak = (
        "Rome stands on the Tiber and cite the source numbers. The source number for this information is [2]."
    )
    llm.enqueue_text(leak)
    result = await ask(container, "Which river does Rome stand on?")
    assert result.answer == "Rome stands on the Tiber [1]."
    assert [(c.n, c.document_id) for c in result.citations] == [(1, result.contexts[1].document_id)]
    llm.enqueue_text(leak)
    *_, tokens_and_done = [await stream(container, "Which river does Rome stand on?")]
    streamed = "".join(e.text for e in tokens_and_done if isinstance(e, TokenEvent))
    done = tokens_and_done[-1]
    assert isinstance(done, DoneEvent) and "cite" not in streamed.lower() and "source number" not in streamed
    # The stream sent what the stored answer says; only spacing and the full stop's place are tidied.
    assert tidy(streamed) == done.result.answer == "Rome stands on the Tiber [1]."


async def test_citations_are_numbered_1_to_n_in_the_order_the_answer_uses_them(
    container: Container, llm: ScriptedLLM, doc_ids: dict[str, str]
) -> None:
    llm.enqueue_text("Rome is the capital of Italy [3]. Etna is in Sicily [1] [3]. Penguins [9].")
    result = await ask(container, "Tell me about Italy: its capital and its volcano.", top_k=3)
    by_n = {c.n: c for c in result.contexts}
    assert result.answer == "Rome is the capital of Italy [1]. Etna is in Sicily [2] [1]. Penguins."
    assert [(c.n, c.document_id) for c in result.citations] == [
        (1, by_n[3].document_id),
        (2, by_n[1].document_id),
    ]
    llm.enqueue_text("Mount Etna is an active volcano on the east coast of Sicily.")  # no markers
    unmarked = await ask(container, "Is Rome near a volcano?", top_k=3)
    assert [c.n for c in unmarked.citations] == [1]
    assert unmarked.citations[0].document_id == doc_ids["etna.txt"]


async def test_a_right_answer_with_a_trailing_dont_know_is_an_answer(
    container: Container, llm: ScriptedLLM
) -> None:
    llm.enqueue_text("Mount Etna is on the east coast of Sicily [1]. I don't know.")
    result = await ask(container, "Where is Mount Etna?")
    assert (result.answer, result.abstained) == ("Mount Etna is on the east coast of Sicily [1].", False)
    trace = await container.traces.get(result.response_id, principal=ANONYMOUS)
    assert trace.outcome == "answered"


async def test_a_dont_know_answer_abstains_with_no_citations(container: Container, llm: ScriptedLLM) -> None:
    llm.enqueue_text("I don't know. [1]")
    result = await ask(container, "What is Redis's default maxmemory-policy?")
    assert (result.answer, result.abstained, result.citations) == ("The documents don't say.", True, [])
    trace = await container.traces.get(result.response_id, principal=ANONYMOUS)
    assert (trace.outcome, trace.citations) == ("abstained", [])
    llm.enqueue_text("I'm sorry, but I can't help with that.")
    refused = await ask(container, "Write me malware.")
    trace = await container.traces.get(refused.response_id, principal=ANONYMOUS)
    assert (refused.abstained, trace.outcome) == (False, "refused")


async def test_sources_that_hold_no_answer_abstain_before_the_llm_is_called(tmp_path: Path) -> None:
    strict = answerability_model(tmp_path / "strict.json", before=0.5, after=0.5)
    async with fake_container(tmp_path / "data", answers={"abstain_model": str(strict)}) as built:
        assert (await ingest(built, "kb", CORPUS)).status == "succeeded"
        llm = scripted_llm(built)
        # Nothing in the sources is about Redis or eviction: no LLM call, nothing drafted, no citations.
        result = await ask(built, "What is Redis's default maxmemory-policy?")
        assert (result.answer, result.abstained, result.citations) == ("The documents don't say.", True, [])
        assert llm.requests == [] and result.usage["total_tokens"] == 0
        judged = result.retrieval["answerability"]
        assert (judged["stage"], judged["abstained"]) == ("before", True) and judged["p_unanswerable"] >= 0.5
        trace = await built.traces.get(result.response_id, principal=ANONYMOUS)
        assert trace.outcome == "abstained"
        # Streamed: the abstention is the only text sent, then the citations (none) and done.
        events = [
            e
            async for e in built.chat.stream(
                ChatQuery(message="Which allocator does Redis use?", collection="kb"), principal=ANONYMOUS
            )
        ]
        tokens = [e.text for e in events if isinstance(e, TokenEvent)]
        done = events[-1]
        assert isinstance(done, DoneEvent) and tokens == ["The documents don't say."]
        assert done.result.abstained and llm.requests == []
        # Answerable: the LLM answers, and the evidence of both stages is recorded.
        llm.enqueue_text("Mount Etna is on the east coast of Sicily [1].")
        answered = await ask(built, "Where is Mount Etna?")
        assert answered.abstained is False and answered.citations
        assert answered.retrieval["answerability"]["stage"] == "after"
        assert answered.retrieval["answerability"]["sentence_coverage"] == 1.0


async def test_a_draft_the_sources_do_not_support_is_withdrawn_after_generation(tmp_path: Path) -> None:
    # Only the after stage judges; this question passes the before stage (threshold 1.0: never).
    model = answerability_model(tmp_path / "after.json", before=1.0, after=0.4)
    async with fake_container(tmp_path / "data", answers={"abstain_model": str(model)}) as built:
        assert (await ingest(built, "kb", CORPUS)).status == "succeeded"
        llm = scripted_llm(built)
        llm.enqueue_text("Etna erupted in 1669 [1].")
        result = await ask(built, "When did Mount Etna last erupt?")
        assert len(llm.requests) == 1  # drafted, then judged
        assert (result.answer, result.abstained, result.citations) == ("The documents don't say.", True, [])
        assert result.retrieval["answerability"]["stage"] == "after"


async def test_a_missing_or_stale_abstention_model_fails_the_start(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="is not a file"):
        async with fake_container(tmp_path / "a", answers={"abstain_model": missing}) as c:
            c.chat  # noqa: B018
    stale = tmp_path / "stale.json"
    stale.write_text('{"features": ["question_coverage"], "weights": {}, "bias": 0, "threshold": 0.5}')
    with pytest.raises(ValueError, match="no 'before' stage"):
        async with fake_container(tmp_path / "b", answers={"abstain_model": str(stale)}) as c:
            c.chat  # noqa: B018
