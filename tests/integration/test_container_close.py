"""Closing the container forgets every part it built but the costly ones that hold nothing of one opening
(`KEPT_ACROSS_OPENINGS`), so opening it again rebuilds them; parts handed in stay the caller's."""

from __future__ import annotations

import pytest

from app.container import KEPT_ACROSS_OPENINGS, Container, open_container

pytestmark = pytest.mark.integration


async def test_close_forgets_every_part_but_the_kept_ones(make_container) -> None:  # type: ignore[no-untyped-def]
    container: Container = make_container(llm={"provider": "scripted"})
    async with open_container(container):
        for name in ("keys", "audit", "key_admin", "jobs", "history", "versions", "llm", "store", "prompts"):
            getattr(container, name)
        first_keys = container.keys
    built = {name for name in Container._parts() if container.built(name)}
    assert built <= KEPT_ACROSS_OPENINGS | container._injected
    assert {"store", "prompts"} <= built and not {"keys", "jobs", "history", "llm"} & built
    async with open_container(container):
        assert container.keys is not first_keys  # rebuilt on the next opening
        assert container.keys.list_keys() == []


def test_every_kept_part_is_a_part() -> None:
    assert set(Container._parts()) >= KEPT_ACROSS_OPENINGS
