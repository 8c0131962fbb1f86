"""The decision loop on the fake graph (tests/unit/fakes.py): the model registry, answer profiles and
experiments through ChatService and their services. No model, no Chroma, no socket."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from app.auth.principal import Principal
from app.container import Container
from app.experiments.spec import parse_spec
from app.llm.registry import ModelConflict, ModelNotFound
from app.services.chat_types import ChatQuery, ChatResult, DoneEvent, StartEvent
from app.services.errors import InvalidInput
from app.services.experiments import ExperimentConflict, ExperimentNotFound
from app.settings import ModelEntry
from app.traces.store import Trace
from ingest.vector_index import CollectionNotFound
from tests.samples import make_trace
from tests.unit.fakes import ANONYMOUS, fake_container, ingest

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="module")]

CORPUS = {
    "etna.txt": b"Mount Etna is an active volcano on the east coast of Sicily.",
    "rome.txt": b"Rome is the capital of Italy and stands on the river Tiber.",
}
OTHER_TENANT = Principal(tenant="t2", role="admin", key_id="k-t2")
PRICED = ModelEntry(name="priced", provider="scripted", model="priced-model", price_in=1.0, price_out=2.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def container(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Container]:
    """One graph for the module: collection `kb` (no experiment), `exp` (experiments run on it)."""
    async with fake_container(
        tmp_path_factory.mktemp("decisions"),
        experiments={"refresh_s": 0.0, "guardrail_interval_s": 0.0, "guardrail_min_units": 5},
    ) as built:
        for name in ("kb", "exp", "other"):
            assert (await ingest(built, name, CORPUS)).status == "succeeded"
        await built.models.add(ANONYMOUS, PRICED)
        yield built


async def ask(container: Container, message: str, collection: str = "kb", **query: object) -> ChatResult:
    return await container.chat.chat(
        ChatQuery(message=message, collection=collection, **query),  # type: ignore[arg-type]
        principal=ANONYMOUS,
    )


# -- the model registry ------------------------------------------------------------------------


async def test_the_registry_lists_the_default_packaged_and_registered_models(container: Container) -> None:
    listed = {m.name: m for m in await container.models.list("default")}
    assert listed["scripted-model"].default and listed["scripted-model"].source == "settings"
    assert listed["local-qwen2.5-0.5b"].entry.license == "apache-2.0"
    assert listed["local-smollm2"].entry.license == "apache-2.0"
    assert listed["priced"].source == "registered" and listed["priced"].entry.price_out == 2.0
    # Another tenant sees the built-in models, not this tenant's.
    assert "priced" not in {m.name for m in await container.models.list("t2")}
    with pytest.raises(ModelNotFound):
        await container.models.get("t2", "priced")


async def test_registering_refuses_taken_names_and_unknown_fallbacks(container: Container) -> None:
    with pytest.raises(ModelConflict, match="built-in"):
        await container.models.add(ANONYMOUS, ModelEntry(name="local-smollm2", provider="scripted"))
    with pytest.raises(ModelConflict, match="already exists"):
        await container.models.add(ANONYMOUS, PRICED)
    with pytest.raises(ModelNotFound):
        await container.models.add(ANONYMOUS, ModelEntry(name="x", provider="scripted", fallback="nope"))
    with pytest.raises(ValueError, match="base_url"):
        ModelEntry(name="y", provider="openai", model="m")


async def test_a_request_naming_a_model_is_answered_by_it_with_its_cost_traced(container: Container) -> None:
    result = await ask(container, "Where is Mount Etna?", model="priced")
    assert result.model == "priced-model"
    trace = await container.traces.get(result.response_id, principal=ANONYMOUS)
    usage = result.usage
    assert trace.params["model"] == "priced"
    assert trace.cost == pytest.approx(
        (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1000
    )
    with pytest.raises(ModelNotFound):
        await ask(container, "Where is Mount Etna?", model="no-such-model")


# -- answer profiles ---------------------------------------------------------------------------


async def test_a_profile_sets_a_collections_defaults_and_a_request_still_wins(container: Container) -> None:
    shown = await container.profiles.set(
        ANONYMOUS, "other", {"prompt": "answer@v4", "top_k": 1, "mode": "bm25"}
    )
    assert shown["profile"] == {"prompt": "answer@v4", "top_k": 1, "mode": "bm25"}
    assert shown["effective"]["model"] == "scripted-model"
    result = await ask(container, "Where is Mount Etna?", collection="other")
    assert (result.prompt, result.retrieval["top_k"], result.retrieval["mode"]) == ("answer@v4", 1, "bm25")
    assert len(result.contexts) == 1
    explicit = await ask(container, "Where is Mount Etna?", collection="other", prompt="answer@v6", top_k=2)
    assert (explicit.prompt, explicit.retrieval["top_k"]) == ("answer@v6", 2)
    # Unset one field (None), then replace the whole profile.
    await container.profiles.set(ANONYMOUS, "other", {"mode": None})
    assert (await container.profiles.get(ANONYMOUS, "other"))["profile"] == {
        "prompt": "answer@v4",
        "top_k": 1,
    }
    await container.profiles.set(ANONYMOUS, "other", {"model": "priced"}, replace=True)
    assert (await ask(container, "Where is Mount Etna?", collection="other")).model == "priced-model"
    await container.profiles.set(ANONYMOUS, "other", {}, replace=True)
    assert (await container.profiles.get(ANONYMOUS, "other"))["profile"] == {}


async def test_a_profile_with_fusion_settings_changes_how_hybrid_fuses(container: Container) -> None:
    await container.profiles.set(ANONYMOUS, "other", {"fusion": "rrf", "rrf_k": 10, "bm25_weight": 0.5})
    result = await ask(container, "Where is Mount Etna?", collection="other")
    assert result.retrieval["fusion"] == {"method": "rrf", "rrf_k": 10, "bm25_weight": 0.5}
    await container.profiles.set(ANONYMOUS, "other", {}, replace=True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"prompt": "answer@v99"}, "prompt"),
        ({"top_k": 0}, "top_k"),
        ({"mode": "fuzzy"}, "mode"),
        ({"temperature": 1.0}, "temperature"),
        ({"fusion": "max"}, "fusion"),
    ],
)
async def test_a_bad_profile_is_refused_and_changes_nothing(
    container: Container, values: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        await container.profiles.set(ANONYMOUS, "other", values)
    with pytest.raises(ModelNotFound):
        await container.profiles.set(ANONYMOUS, "other", {"model": "no-such-model"})
    assert (await container.profiles.get(ANONYMOUS, "other"))["profile"] == {}


async def test_profiles_belong_to_their_tenant(container: Container) -> None:
    with pytest.raises(CollectionNotFound):
        await container.profiles.get(OTHER_TENANT, "kb")
    with pytest.raises(CollectionNotFound):
        await container.profiles.set(OTHER_TENANT, "kb", {"top_k": 2})


# -- experiments -------------------------------------------------------------------------------

SPEC = {
    "name": "unit-exp",
    "collections": ["exp"],
    "seed": "s1",
    "arms": [
        {"name": "control", "weight": 1},
        {"name": "v4", "weight": 1, "overrides": {"prompt": "answer@v4", "model": "priced"}},
    ],
    "guardrails": [{"metric": "error_rate", "max_increase": 0.05}],
}


async def test_an_experiment_enrolls_conversations_sticks_and_shows_its_arm(container: Container) -> None:
    spec = parse_spec(SPEC)
    created = await container.experiments.create(ANONYMOUS, spec)
    assert created.status == "draft"
    with pytest.raises(ExperimentConflict):
        await container.experiments.create(ANONYMOUS, spec)
    # A draft enrolls nobody.
    assert (await ask(container, "Where is Mount Etna?", collection="exp")).arm is None
    await container.experiments.change_status(ANONYMOUS, "unit-exp", "start")

    arms: dict[str, str] = {}
    for i in range(12):
        first = await ask(container, f"Where is Mount Etna? ({i})", collection="exp")
        assert first.experiment == "unit-exp" and first.arm in ("control", "v4")
        again = await ask(container, "And Rome?", collection="exp", conversation_id=first.conversation_id)
        assert again.arm == first.arm  # the conversation keeps its arm
        arms[first.conversation_id] = first.arm
        if first.arm == "v4":
            assert (first.prompt, first.model) == ("answer@v4", "priced-model")
        else:
            assert (first.prompt, first.model) == ("answer@v6", "scripted-model")
        trace = await container.traces.get(first.response_id, principal=ANONYMOUS)
        assert (trace.experiment, trace.arm, trace.unit) == ("unit-exp", first.arm, first.conversation_id)
    assert set(arms.values()) == {"control", "v4"}

    # The stream says so before any token.
    events = [
        e
        async for e in container.chat.stream(
            ChatQuery(message="Where is Rome?", collection="exp"), principal=ANONYMOUS
        )
    ]
    start = events[0]
    assert isinstance(start, StartEvent) and start.experiment == "unit-exp" and start.arm in ("control", "v4")
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.result.arm == start.arm

    # A request naming its own prompt is not enrolled, and its trace says why.
    explicit = await ask(container, "Where is Mount Etna?", collection="exp", prompt="answer@v5")
    assert (explicit.experiment, explicit.arm, explicit.prompt) == (None, None, "answer@v5")
    trace = await container.traces.get(explicit.response_id, principal=ANONYMOUS)
    assert trace.params["experiment"] == {"enrolled": False, "reason": "the request named its own prompt"}
    # Other collections are not in it.
    assert (await ask(container, "Where is Mount Etna?")).arm is None

    # Feedback and a citation click on one answer, then the report counts them per arm.
    some = await ask(container, "Where is Mount Etna? (rated)", collection="exp")
    await container.traces.feedback(some.response_id, {"rating": "up"}, principal=ANONYMOUS)
    await container.traces.event(some.response_id, "citation_opened", 1, principal=ANONYMOUS)
    report = await container.experiments.report(ANONYMOUS, "unit-exp")
    total_units = sum(report["arms"][a]["units"] for a in ("control", "v4"))
    assert total_units == 12 + 2  # 12 conversations, the stream's and the rated one
    rated = report["arms"][some.arm]
    assert rated["thumbs_up_rate"] > 0 and rated["citation_ctr"] > 0
    assert report["arms"]["v4"]["cost_per_answer"] > 0 == report["arms"]["control"]["cost_per_answer"]
    assert report["comparisons"]["v4"]["thumbs_up_rate"]["test"]
    assert report["srm"]["flagged"] is False

    # Paused: nobody enrolled; started again: back in.
    await container.experiments.change_status(ANONYMOUS, "unit-exp", "pause")
    assert (await ask(container, "Where is Mount Etna?", collection="exp")).arm is None
    await container.experiments.change_status(ANONYMOUS, "unit-exp", "start")
    assert (await ask(container, "Where is Mount Etna?", collection="exp")).arm is not None


async def test_a_restarted_server_gives_every_conversation_the_same_arm(container: Container) -> None:
    """Another process on the same database (a restart, a replica): nothing is stored per unit, the
    arm is the hash's."""
    units = [f"conversation-{i}" for i in range(40)]
    before = [await container.experiments.enroll(ANONYMOUS, "exp", conversation=u) for u in units]
    fresh = Container(container.settings)
    try:
        after = [await fresh.experiments.enroll(ANONYMOUS, "exp", conversation=u) for u in units]
    finally:
        await fresh.aclose()
    assert [e.arm for e in after if e] == [e.arm for e in before if e] and len(after) == 40
    assert {e.arm for e in before if e} == {"control", "v4"}


async def test_a_second_experiment_cannot_run_on_the_same_collection(container: Container) -> None:
    await container.experiments.create(ANONYMOUS, parse_spec({**SPEC, "name": "rival"}))
    with pytest.raises(ExperimentConflict, match="unit-exp"):
        await container.experiments.change_status(ANONYMOUS, "rival", "start")
    with pytest.raises(ExperimentConflict, match="cannot pause"):
        await container.experiments.change_status(ANONYMOUS, "rival", "pause")


async def test_experiments_belong_to_their_tenant(container: Container) -> None:
    with pytest.raises(ExperimentNotFound):
        await container.experiments.get(OTHER_TENANT, "unit-exp")
    with pytest.raises(ExperimentNotFound):
        await container.experiments.change_status(OTHER_TENANT, "unit-exp", "stop")
    assert await container.experiments.list_all(OTHER_TENANT) == []
    with pytest.raises(CollectionNotFound):  # its collections are not the other tenant's
        await container.experiments.create(OTHER_TENANT, parse_spec({**SPEC, "name": "theirs"}))
    # A key limited to other collections does not see it either.
    limited = Principal(tenant="default", role="admin", key_id="k-lim", collections=frozenset({"kb"}))
    with pytest.raises(ExperimentNotFound):
        await container.experiments.get(limited, "unit-exp")


async def test_a_guardrail_stops_a_failing_arm_and_its_traffic_goes_to_control(container: Container) -> None:
    """Synthetic traces: v4 fails a third of its requests, control none (guardrail error_rate +0.05)."""
    now = time.time()
    for i in range(300):
        arm = "v4" if i % 2 else "control"
        failed = arm == "v4" and i % 3 == 0
        await container.trace_store.record(_trace(f"resp_g{i}", now, arm, f"unit-g{i}", failed))
    stopped = await container.experiments.check_guardrails()
    assert stopped == [("default", "unit-exp", "v4")]
    experiment = await container.experiments.get(ANONYMOUS, "unit-exp")
    assert "error_rate" in experiment.stopped_arms["v4"]["reason"]
    assert experiment.log[-1]["event"] == "arm_stopped"
    assert await container.experiments.check_guardrails() == []  # once
    # Every new conversation now gets control.
    assert {(await ask(container, f"Where? {i}", collection="exp")).arm for i in range(8)} == {"control"}
    entries = await container.key_admin.entries(ANONYMOUS, since=None, action="experiment.arm_stop", limit=5)
    assert [e.actor for e in entries] == ["guardrail"]
    report = await container.experiments.report(ANONYMOUS, "unit-exp")
    assert report["stopped_arms"] == ["v4"]


async def test_conclude_ships_the_winner_into_the_profile_and_stops(container: Container) -> None:
    shipped = await container.experiments.conclude(ANONYMOUS, "unit-exp", "v4")
    assert shipped["experiment"]["status"] == "stopped"
    profile = await container.profiles.get(ANONYMOUS, "exp")
    assert profile["profile"] == {"prompt": "answer@v4", "model": "priced"}
    after = await ask(container, "Where is Mount Etna?", collection="exp")
    assert (after.arm, after.prompt, after.model) == (None, "answer@v4", "priced-model")
    with pytest.raises(InvalidInput, match="no arm"):
        await container.experiments.conclude(ANONYMOUS, "rival", "nope")
    audit = await container.key_admin.entries(ANONYMOUS, since=None, action=None, limit=50)
    actions = {e.action for e in audit}
    assert {
        "experiment.create",
        "experiment.start",
        "experiment.conclude",
        "profile.set",
        "model.add",
    } <= actions


def _trace(rid: str, at: float, arm: str, unit: str, failed: bool) -> Trace:
    return make_trace(  # type: ignore[no-any-return]
        rid,
        created_at=at,
        collection="exp",
        prompt="answer@v6",
        answer="" if failed else "a",
        outcome="error" if failed else "answered",
        usage={"prompt_tokens": 10, "completion_tokens": 5},
        experiment="unit-exp",
        arm=arm,
        unit=unit,
        cost=0.0,
    )


async def test_registration_can_be_turned_off(container: Container) -> None:
    from app.llm.registry import ModelRegistry, RegistrationDisabled
    from ingest.errors import describe

    settings = container.settings.model_copy(
        update={"models": container.settings.models.model_copy(update={"allow_registration": False})}
    )
    registry = ModelRegistry(settings, lambda: None, lambda: container.llm)  # type: ignore[arg-type,return-value]
    with pytest.raises(RegistrationDisabled) as refused:
        await registry.add(ANONYMOUS, ModelEntry(name="z", provider="scripted"))
    public = describe(refused.value)
    assert public is not None and (public.status, public.code) == (403, "model_registration_disabled")


async def test_clients_are_shared_by_endpoint_and_fallback_loops_are_refused(container: Container) -> None:
    """One client per endpoint whatever the name or tenant (a packaged local model is loaded once); a
    chain of fallbacks that comes back to its start is refused, not followed forever."""
    other = Principal(tenant="t3", role="admin", key_id="k-t3")
    await container.models.add(ANONYMOUS, ModelEntry(name="same-a", provider="scripted", model="shared-id"))
    await container.models.add(other, ModelEntry(name="same-b", provider="scripted", model="shared-id"))
    a = await container.models.llm("default", await container.models.get("default", "same-a"))
    b = await container.models.llm("t3", await container.models.get("t3", "same-b"))
    assert a is b
    for name, fallback in (("loop-a", None), ("loop-b", "loop-a"), ("loop-c", "loop-b")):
        await container.models.add(ANONYMOUS, ModelEntry(name=name, provider="scripted", fallback=fallback))
    looped = ModelEntry(name="loop-a", provider="scripted", fallback="loop-c")
    await container.models.add(ANONYMOUS, looped, replace=True)
    with pytest.raises(ModelConflict, match="lead back"):
        await container.models.llm("default", await container.models.get("default", "loop-c"))


async def test_a_tenant_keeps_a_bounded_number_of_experiments(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import experiments as module
    from app.services.limits import OverLimit

    kept = len(await container.experiments.list_all(ANONYMOUS))
    monkeypatch.setattr(module, "MAX_EXPERIMENTS", kept)
    with pytest.raises(OverLimit, match="at most"):
        await container.experiments.create(ANONYMOUS, parse_spec({**SPEC, "name": "one-too-many"}))
    # Replacing one it has (a stopped one) is no new experiment.
    replaced = await container.experiments.create(
        ANONYMOUS, parse_spec({**SPEC, "name": "unit-exp"}), replace=True
    )
    assert replaced.status == "draft"
