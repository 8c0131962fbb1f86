"""Routing chains on the fake graph (tests/unit/fakes.py): rules answer, refuse or steer; curated answers
are served without retrieval or the LLM, and not when stale; the review flow from a reviewed correction;
the model policy picks a model and falls back when it is down; tenants; hostile patterns; hot reload."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from app.auth.principal import Principal
from app.container import Container
from app.llm.scripted_provider import ScriptedLLM
from app.routing.chain import parse_chain
from app.services.chat_types import ChatQuery, ChatResult, DoneEvent, TokenEvent
from app.services.errors import InvalidInput
from app.services.routing import FITTED_THRESHOLD
from app.settings import ModelEntry
from ingest.vector_index import CollectionNotFound
from tests.unit.fakes import ANONYMOUS, fake_container, fresh_llm, ingest

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="module")]

CORPUS = {
    "leave.txt": b"Employees get 30 days of paid leave a year. Leave requests go to your manager.",
    "vpn.txt": b"The VPN client is WireGuard. Ask the IT desk for a configuration file.",
}
OTHER = Principal(tenant="t2", role="admin", key_id="k-t2")
CHAIN = """
stages:
  - {type: rule, id: greeting, pattern: '^(hi|hello)\\b', answer: "Hello! Ask me about the handbook."}
  - {type: rule, id: payroll, keywords: [salary, payslip], refuse: "Ask payroll@ directly."}
  - {type: rule, id: it, keywords: [vpn], collection: it, profile: {top_k: 1}}
  - {type: curated, threshold: 0.9}
  - {type: llm, model_policy: {when: [{question_words_over: 12, model: strong}]}}
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def container(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Container]:
    async with fake_container(
        tmp_path_factory.mktemp("routing"), experiments={"refresh_s": 0.0, "guardrail_interval_s": 0.0}
    ) as built:
        for name in ("handbook", "it"):
            assert (await ingest(built, name, CORPUS)).status == "succeeded"
        await ingest(built, "handbook", CORPUS, principal=OTHER)
        await built.models.add(
            ANONYMOUS, ModelEntry(name="strong", provider="scripted", model="strong-model")
        )
        await built.routing.set_chain(ANONYMOUS, "handbook", parse_chain(CHAIN))
        yield built


@pytest.fixture
def llm(container: Container) -> ScriptedLLM:
    """The container's ScriptedLLM with no request recorded yet."""
    return fresh_llm(container)


async def ask(
    container: Container, message: str, principal: Principal = ANONYMOUS, **query: object
) -> ChatResult:
    return await container.chat.chat(
        ChatQuery(message=message, collection="handbook", **query),  # type: ignore[arg-type]
        principal=principal,
    )


async def test_a_rule_answers_without_retrieval_or_the_llm(container: Container, llm: ScriptedLLM) -> None:
    result = await ask(container, "Hello there")
    assert (result.answer, result.answered_by, result.route) == (
        "Hello! Ask me about the handbook.",
        "rule",
        "greeting",
    )
    assert llm.requests == [] and result.citations == [] and result.usage["total_tokens"] == 0
    trace = await container.traces.get(result.response_id, principal=ANONYMOUS)
    assert trace.params["routing"] == {"answered_by": "rule", "route": "greeting"}
    assert trace.retrieval["routing"] == [{"stage": "rule", "id": "greeting", "outcome": "answered"}]
    refused = await ask(container, "Where is my payslip?")
    assert (refused.answered_by, refused.answer, refused.route) == (
        "refused",
        "Ask payroll@ directly.",
        "payroll",
    )
    assert (await container.traces.get(refused.response_id, principal=ANONYMOUS)).outcome == "refused"
    # The monitor report splits traffic by who answered.
    shares = (await container.traces.figures(principal=ANONYMOUS, stores=["handbook"]))["by"]["answered_by"]
    assert shares["rule"]["answers"] == 1 and shares["refused"]["answers"] == 1


async def test_a_rule_answer_streams_too(container: Container, llm: ScriptedLLM) -> None:
    events = [
        e
        async for e in container.chat.stream(
            ChatQuery(message="hi!", collection="handbook"), principal=ANONYMOUS
        )
    ]
    assert [e.text for e in events if isinstance(e, TokenEvent)] == ["Hello! Ask me about the handbook."]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.result.answered_by == "rule" and llm.requests == []


async def test_a_rule_steers_to_another_collection_and_profile(
    container: Container, llm: ScriptedLLM
) -> None:
    result = await ask(container, "How do I set up the VPN?")
    assert (result.answered_by, result.route, result.collection) == ("llm", "it", "it")
    assert result.retrieval["top_k"] == 1 and len(llm.requests) == 1
    assert result.retrieval["routing"][0] == {
        "stage": "rule", "id": "it", "outcome": "steered", "collection": "it", "profile": {"top_k": 1}
    }  # fmt: skip


async def test_the_model_policy_picks_the_model_and_falls_back_when_it_is_down(
    container: Container, llm: ScriptedLLM
) -> None:
    long = (
        "Could you please tell me in detail how many days of paid leave an employee gets every single year?"
    )
    picked = await ask(container, long)
    assert picked.model == "strong-model" and picked.answered_by == "llm"
    assert picked.retrieval["routing"][-1]["model"] == "strong"
    short = await ask(container, "How many days of leave?")
    assert short.model == "scripted-model"
    # The strong model down: the plan's model answers instead.
    strong = await container.models.llm("default", await container.models.get("default", "strong"))
    assert isinstance(strong, ScriptedLLM)
    strong.enqueue_error(503)
    fell_back = await ask(container, long)
    assert fell_back.model == "scripted-model" and fell_back.answer
    # A request naming its model keeps it.
    named = await ask(container, long, model="scripted-model")
    assert named.model == "scripted-model"


async def test_curated_review_flow_serves_without_the_llm_and_not_when_stale(
    container: Container, llm: ScriptedLLM
) -> None:
    llm.enqueue_text("You get 20 days [1].")
    first = await ask(container, "How many days of paid leave do employees get?")
    assert first.answered_by == "llm" and first.citations
    # A reviewer corrects it and marks it reviewed: a candidate, not served yet.
    await container.traces.feedback(
        first.response_id,
        {"rating": "down", "correction": "Employees get 30 days of paid leave a year.", "reviewed": True},
        principal=ANONYMOUS,
    )
    [candidate] = await container.routing.list_curated(ANONYMOUS, "handbook", "candidate")
    assert candidate.question == "How many days of paid leave do employees get?"
    assert candidate.citations and candidate.citations[0]["text"]
    llm.requests.clear()
    assert (await ask(container, "How many days of paid leave do employees get?")).answered_by == "llm"
    # Approved: served to the same question without retrieval or the LLM, with its citations.
    approved = await container.routing.review(ANONYMOUS, "handbook", candidate.id, "approve")
    assert approved.status == "approved" and approved.documents and approved.embedding
    llm.requests.clear()
    served = await ask(container, "How many days of paid leave do employees get?")
    assert (served.answered_by, served.route, served.answer) == (
        "curated",
        candidate.id,
        "Employees get 30 days of paid leave a year.",
    )
    assert llm.requests == [] and [c.document_id for c in served.citations] == [
        c["document_id"] for c in candidate.citations
    ]
    decision = served.retrieval["routing"][-1]
    assert decision["outcome"] == "answered" and decision["score"] >= 0.9
    # Another question hands on to the LLM.
    assert (await ask(container, "Who configures the VPN client for me?")).answered_by == "llm"
    # The cited document changes: the curated answer is not served, and is flagged stale.
    await ingest(container, "handbook", {"leave.txt": b"Employees get 32 days of paid leave a year."})
    llm.requests.clear()
    after = await ask(container, "How many days of paid leave do employees get?")
    assert after.answered_by == "llm" and len(llm.requests) == 1
    [stale] = await container.routing.list_curated(ANONYMOUS, "handbook", "stale")
    assert stale.id == candidate.id and "leave" in (stale.note or "") or stale.note


async def test_a_hand_written_curated_answer_and_its_rejection(container: Container) -> None:
    item = await container.routing.add_curated(ANONYMOUS, "handbook", "Where is the office?", "Floor 3.")
    assert item.status == "candidate"
    assert (await container.routing.review(ANONYMOUS, "handbook", item.id, "reject")).status == "rejected"
    with pytest.raises(InvalidInput):
        await container.routing.add_curated(ANONYMOUS, "handbook", "", "x")
    with pytest.raises(InvalidInput):
        await container.routing.review(ANONYMOUS, "handbook", item.id, "promote")


async def test_rules_belong_to_their_tenant(container: Container) -> None:
    # Tenant t2 has its own `handbook` with no chain: its greeting goes to the LLM.
    theirs = await ask(container, "Hello there", principal=OTHER)
    assert theirs.answered_by == "llm"
    with pytest.raises(CollectionNotFound):
        await container.routing.show(OTHER, "it")
    assert (await container.routing.show(OTHER, "handbook"))["chain"] is None
    assert await container.routing.list_curated(OTHER, "handbook", None) == []


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ({"stages": [{"type": "rule", "id": "r", "pattern": "(a)\\1", "answer": "x"}]}, "RE2"),
        ({"stages": [{"type": "rule", "id": "r", "pattern": "(?=a)b", "answer": "x"}]}, "RE2"),
        ({"stages": [{"type": "rule", "id": "r", "pattern": "a{1000}{1000}", "answer": "x"}]}, "RE2"),
        ({"stages": [{"type": "rule", "id": "r", "pattern": "x" * 1001, "answer": "x"}]}, "1000"),
        (
            {
                "stages": [
                    {"type": "rule", "id": f"r{i}", "keywords": ["k"], "answer": "x"} for i in range(201)
                ]
            },
            "200",
        ),
        ({"stages": [{"type": "rule", "id": "r", "keywords": ["k"]}]}, "one action"),
        (
            {"stages": [{"type": "rule", "id": "r", "keywords": ["k"], "answer": "a", "refuse": "b"}]},
            "one action",
        ),
        ({"stages": [{"type": "llm"}, {"type": "curated"}]}, "last"),
        ({"stages": [{"type": "curated", "threshold": 1.5}]}, "threshold"),
        ({"stages": [{"type": "magic"}]}, "type"),
    ],
)
async def test_hostile_or_bad_chains_are_refused_at_creation(chain: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as refused:
        parse_chain(chain)
    assert refused.value.code == "invalid_routes"


async def test_matching_stays_linear_on_a_pathological_input() -> None:
    """The classic catastrophic pattern for a backtracking engine: RE2 answers at once."""
    import time

    chain = parse_chain({"stages": [{"type": "rule", "id": "r", "pattern": "^(a+)+$", "answer": "x"}]})
    rule = chain.stages[0]
    started = time.perf_counter()
    assert not rule.matches("a" * 8000 + "!")  # type: ignore[union-attr]
    assert time.perf_counter() - started < 1.0  # a backtracking engine takes longer than the universe


async def test_names_a_chain_uses_must_exist(container: Container) -> None:
    for stage, error in (
        ({"type": "rule", "id": "r", "keywords": ["k"], "collection": "nope"}, CollectionNotFound),
        ({"type": "rule", "id": "r", "keywords": ["k"], "model": "nope"}, LookupError),
        ({"type": "llm", "model_policy": {"default": "nope"}}, LookupError),
    ):
        with pytest.raises(error):
            await container.routing.set_chain(ANONYMOUS, "it", parse_chain({"stages": [stage]}))
    assert (await container.routing.show(ANONYMOUS, "it"))["chain"] is None


async def test_a_chain_set_through_another_process_is_used_within_refresh(container: Container) -> None:
    """Hot reload: another container on the same database (another replica; its in-memory index holds no
    collections, so it writes the chain's row as its service would after its checks)."""
    other = Container(container.settings)
    try:
        chain = parse_chain(
            {"stages": [{"type": "rule", "id": "late", "keywords": ["wireguard"], "answer": "Yes."}]}
        )
        other.routing.chains.put("it", chain)
    finally:
        await other.aclose()
    result = await container.chat.chat(
        ChatQuery(message="Is it WireGuard?", collection="it"), principal=ANONYMOUS
    )
    assert (result.answered_by, result.route) == ("rule", "late")
    await container.routing.set_chain(ANONYMOUS, "it", None)


async def test_the_fitted_threshold_is_a_cosine_similarity() -> None:
    assert 0.5 < FITTED_THRESHOLD < 1.0


async def test_routing_on_or_off_is_a_profile_field_an_experiment_can_compare(container: Container) -> None:
    from app.experiments.spec import parse_spec

    await container.profiles.set(ANONYMOUS, "handbook", {"routing": False})
    assert (await ask(container, "Hello there")).answered_by == "llm"
    await container.profiles.set(ANONYMOUS, "handbook", {"routing": None})
    assert (await ask(container, "Hello there")).answered_by == "rule"
    spec = {
        "name": "routing-on-off",
        "collections": ["handbook"],
        "arms": [
            {"name": "control", "weight": 1},
            {"name": "off", "weight": 1, "overrides": {"routing": False}},
        ],
    }
    await container.experiments.create(ANONYMOUS, parse_spec(spec))
    await container.experiments.change_status(ANONYMOUS, "routing-on-off", "start")
    try:
        seen = set()
        for i in range(12):
            result = await ask(container, f"Hello there ({i})")
            assert result.answered_by == ("rule" if result.arm == "control" else "llm")
            seen.add(result.arm)
        assert seen == {"control", "off"}
        report = await container.experiments.report(ANONYMOUS, "routing-on-off")
        assert report["arms"]["control"]["answered_by"] == {"rule": 1.0}
        assert report["arms"]["off"]["answered_by"] == {"llm": 1.0}
    finally:
        await container.experiments.change_status(ANONYMOUS, "routing-on-off", "stop")
