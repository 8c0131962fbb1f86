"""What the collection `VersionRegistry` must do on every system-of-record database, as a mixin of tests
(haystack's document-store test style).

A test class inherits `VersionRegistryContract` and provides `make_registry()`, a fixture returning a
factory of registries that all share one migrated database with no versions in it; each registry has an
engine of its own, as each replica does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from app.services.collection_versions import CollectionVersion, VersionConflict, VersionRegistry

RegistryFactory = Callable[[], VersionRegistry]

SETTINGS = {"embedding_model": "models/minilm-copy", "chunk_size": 256, "chunk_overlap": 32}
SERVER_SETTINGS: dict[str, None] = {"embedding_model": None, "chunk_size": None, "chunk_overlap": None}


def build(
    registry: VersionRegistry,
    collection: str,
    state: str,
    *,
    documents: int | None = None,
    chunks: int | None = None,
) -> CollectionVersion:
    """Create the collection's next version and finish it in `state` (the alias does not move)."""
    created = registry.create_once(collection, **SETTINGS)
    registry.finish(collection, created.version, state, documents=documents, chunks=chunks)
    return created


def serving(registry: VersionRegistry, collection: str) -> tuple[int, str] | None:
    """The version number and physical collection the alias names (None: no registry rows)."""
    active = registry.active(collection)
    return None if active is None else (active.version, active.physical)


def race(make_registry: RegistryFactory, collection: str, racers: int = 6) -> list[object]:
    """`create_once` from `racers` threads at once, each with a registry (engine) of its own: each one's
    CollectionVersion or exception."""
    registries = [make_registry() for _ in range(racers)]
    barrier = threading.Barrier(racers)
    results: list[object] = [None] * racers

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = registries[i].create_once(collection, **SERVER_SETTINGS)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


class VersionRegistryContract:
    @pytest.fixture
    def registry(self, make_registry: RegistryFactory) -> VersionRegistry:
        return make_registry()

    def test_a_collection_without_rows(self, registry: VersionRegistry) -> None:
        assert registry.versions("kb") == []
        assert registry.active("kb") is None
        assert registry.previous("kb") is None
        assert registry.aliased() == []

    def test_first_create_registers_version_1_and_builds_version_2(self, registry: VersionRegistry) -> None:
        before = time.time()
        created = registry.create_once("kb", **SETTINGS)
        after = time.time()
        assert created == CollectionVersion(
            "kb", 2, "kb--v2", "models/minilm-copy", 256, 32, "building", created_at=created.created_at
        )
        assert before <= created.created_at <= after and created.label == "v2"
        v1, v2 = registry.versions("kb")
        assert v2 == created  # as stored: settings, state, creation time
        # The collection as it served until now: version 1 under its own name, the server's settings.
        assert (v1.version, v1.physical, v1.state, v1.active) == (1, "kb", "ready", True)
        assert (v1.embedding_model, v1.chunk_size, v1.chunk_overlap) == (None, None, None)
        assert (v1.documents, v1.chunks) == (None, None)  # not counted: its rows predate the registry
        assert v1.finished_at is not None and before <= v1.created_at <= after
        assert registry.active("kb") == v1
        assert registry.aliased() == ["kb"]
        assert registry.previous("kb") is None  # the alias never switched

    def test_server_settings_are_stored_as_none(self, registry: VersionRegistry) -> None:
        created = registry.create_once("kb", **SERVER_SETTINGS)
        assert registry.versions("kb")[-1] == created
        assert (created.embedding_model, created.chunk_size, created.chunk_overlap) == (None, None, None)

    def test_one_building_version_at_a_time(self, registry: VersionRegistry) -> None:
        registry.create_once("acme.hr", **SETTINGS)
        for create in (registry.create_once, registry.create):
            with pytest.raises(VersionConflict) as refused:
                create("acme.hr", **SERVER_SETTINGS)
            # The message names the collection as its tenant calls it, not the store name.
            assert "'hr'" in str(refused.value) and "acme" not in str(refused.value)
        assert [(v.version, v.state) for v in registry.versions("acme.hr")] == [(1, "ready"), (2, "building")]
        # Another collection, or the same name in another tenant, rebuilds meanwhile.
        assert registry.create_once("acme.legal", **SETTINGS).physical == "acme.legal--v2"
        assert registry.create_once("beta.hr", **SETTINGS).physical == "beta.hr--v2"
        assert sorted(registry.aliased()) == ["acme.hr", "acme.legal", "beta.hr"]

    def test_racing_creators_of_a_new_collection_one_wins(self, make_registry: RegistryFactory) -> None:
        results = race(make_registry, "kb")
        won = [r for r in results if isinstance(r, CollectionVersion)]
        assert len(won) == 1 and won[0].version == 2, results
        assert all(isinstance(r, VersionConflict) for r in results if r is not won[0]), results
        registry = make_registry()
        assert [(v.version, v.state) for v in registry.versions("kb")] == [(1, "ready"), (2, "building")]
        assert serving(registry, "kb") == (1, "kb")

    def test_racing_creators_of_a_rebuilt_collection_one_wins(self, make_registry: RegistryFactory) -> None:
        build(make_registry(), "kb", "failed")
        results = race(make_registry, "kb")
        won = [r for r in results if isinstance(r, CollectionVersion)]
        assert [v.version for v in won] == [3], results
        assert all(isinstance(r, VersionConflict) for r in results if r is not won[0]), results
        states = [(v.version, v.state) for v in make_registry().versions("kb")]
        assert states == [(1, "ready"), (2, "failed"), (3, "building")]

    def test_finish_records_state_and_counts_without_switching(self, registry: VersionRegistry) -> None:
        created = registry.create_once("kb", **SETTINGS)
        registry.finish("kb", 2, "ready", documents=5, chunks=41)
        v1, v2 = registry.versions("kb")
        assert (v2.state, v2.documents, v2.chunks, v2.error, v2.active) == ("ready", 5, 41, None, False)
        assert v2.finished_at is not None and v2.finished_at >= created.created_at
        assert v1.active and registry.active("kb") == v1 and registry.previous("kb") is None

    def test_a_failed_version_keeps_its_error_and_frees_the_collection(
        self, registry: VersionRegistry
    ) -> None:
        error = "RuntimeError: unreadable PDF — « Zoë » " + "x" * 3000
        registry.create_once("kb", **SETTINGS)
        registry.finish("kb", 2, "failed", error=error)
        failed = registry.versions("kb")[1]
        assert (failed.state, failed.error, failed.finished_at is not None) == ("failed", error, True)
        # The next rebuild gets a new number: the failed attempt's stays with its row.
        assert registry.create_once("kb", **SETTINGS).physical == "kb--v3"
        assert serving(registry, "kb") == (1, "kb")

    def test_complete_marks_ready_and_switches_in_one_step(self, registry: VersionRegistry) -> None:
        created = registry.create_once("kb", **SETTINGS)
        registry.complete("kb", 2, documents=5, chunks=41)
        active = registry.active("kb")
        assert active is not None
        assert (active.version, active.physical, active.state, active.documents, active.chunks) == (
            2,
            "kb--v2",
            "ready",
            5,
            41,
        )
        assert active.active and active.created_at == created.created_at and active.finished_at is not None
        assert [v.active for v in registry.versions("kb")] == [False, True]
        assert registry.previous("kb") == 1

    def test_complete_of_an_unknown_version_changes_nothing(self, registry: VersionRegistry) -> None:
        registry.create_once("kb", **SETTINGS)
        before = registry.versions("kb")
        with pytest.raises(VersionConflict):
            registry.complete("kb", 7, documents=1, chunks=1)
        assert registry.versions("kb") == before

    def test_switch_back_and_forth_for_rollback(self, registry: VersionRegistry) -> None:
        registry.create_once("kb", **SETTINGS)
        registry.complete("kb", 2, documents=5, chunks=41)
        assert registry.switch("kb", 1) == 2  # the version it named before
        assert serving(registry, "kb") == (1, "kb")
        assert registry.previous("kb") == 2
        assert registry.switch("kb", 2) == 1
        assert registry.previous("kb") == 1
        assert [v.active for v in registry.versions("kb")] == [False, True]

    def test_switch_refuses_a_version_that_is_not_ready(self, registry: VersionRegistry) -> None:
        build(registry, "kb", "failed")
        build(registry, "kb", "ready", documents=1, chunks=2)
        registry.finish("kb", 3, "pruned", documents=0, chunks=0)
        registry.create_once("kb", **SETTINGS)  # v4, building
        for version, state in [(2, "failed"), (3, "pruned"), (4, "building"), (9, "unknown")]:
            with pytest.raises(VersionConflict, match=f"v{version} of 'kb' is {state}, not ready"):
                registry.switch("kb", version)
        with pytest.raises(VersionConflict):
            registry.switch("never-seen", 1)
        assert serving(registry, "kb") == (1, "kb")
        assert registry.previous("kb") is None

    def test_versions_are_listed_in_number_order(self, registry: VersionRegistry) -> None:
        for _ in range(10):  # v2 .. v11: 10 and 11 sort after 9 (numbers, not text)
            build(registry, "kb", "failed")
        registry.create_once("kb", **SETTINGS)
        versions = registry.versions("kb")
        assert [v.version for v in versions] == list(range(1, 13))
        assert [v.physical for v in versions[-3:]] == ["kb--v10", "kb--v11", "kb--v12"]
        assert [v.state for v in versions] == ["ready"] + ["failed"] * 10 + ["building"]

    def test_pruned_versions_stay_listed_and_their_numbers_are_not_reused(
        self, registry: VersionRegistry
    ) -> None:
        for version in (2, 3):
            registry.create_once("kb", **SETTINGS)
            registry.complete("kb", version, documents=version, chunks=10 * version)
        for version in (1, 2):  # what CollectionVersions.prune records for a dropped version
            registry.finish("kb", version, "pruned", documents=0, chunks=0)
        versions = registry.versions("kb")
        assert [(v.version, v.state, v.documents, v.chunks, v.active) for v in versions] == [
            (1, "pruned", 0, 0, False),
            (2, "pruned", 0, 0, False),
            (3, "ready", 3, 30, True),
        ]
        assert registry.create_once("kb", **SETTINGS).version == 4
        assert registry.previous("kb") == 2

    def test_forget_removes_every_row(self, registry: VersionRegistry) -> None:
        registry.create_once("kb", **SETTINGS)
        registry.complete("kb", 2, documents=1, chunks=1)
        registry.create_once("other", **SETTINGS)
        registry.forget("kb")
        registry.forget("never-seen")
        assert registry.versions("kb") == [] and registry.active("kb") is None
        assert registry.previous("kb") is None
        assert registry.aliased() == ["other"]
        # A collection created again under the name starts over: version 1 under its own name.
        assert registry.create_once("kb", **SETTINGS).version == 2
        assert serving(registry, "kb") == (1, "kb")

    def test_registries_on_one_database_see_each_others_writes(self, make_registry: RegistryFactory) -> None:
        first, second = make_registry(), make_registry()
        created = first.create_once("kb", **SETTINGS)
        assert second.versions("kb") == first.versions("kb")
        with pytest.raises(VersionConflict):
            second.create_once("kb", **SETTINGS)
        second.complete("kb", created.version, documents=3, chunks=9)
        assert first.active("kb") == second.active("kb")
        assert serving(first, "kb") == (2, "kb--v2")
        assert first.previous("kb") == 1
        assert first.switch("kb", 1) == 2
        assert serving(second, "kb") == (1, "kb")
        second.forget("kb")
        assert first.versions("kb") == [] and first.aliased() == []
