"""Audit entry ids reveal nothing about other tenants: each entry has a random public id (`aud_` and 16
hex characters), never the table's sequence number, so the gaps between one tenant's ids do not count
the other tenants' writes. On the admin API, the CLI, and rows migrated from before the public id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli.main import app as cli
from app.db import alembic_config, make_engine, migrate
from tests.conftest_services import temporary_postgres_database
from tests.security.auth_app import admin_clients

pytestmark = pytest.mark.integration

AUDIT_ID = re.compile(r"aud_[0-9a-f]{16}")
ENTRY_FIELDS = {
    "id", "tenant", "actor", "action", "outcome", "key_id", "collection", "object_id", "status", "detail",
    "request_id", "at",
}  # fmt: skip


@pytest.fixture
def admin_api(tmp_path: Path, embedder) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:  # type: ignore[no-untyped-def]
    """(client, headers by tenant) of an app with auth on and an admin key for tenants alpha and beta."""
    with admin_clients(tmp_path / "data", embedder, ("alpha", "beta")) as api:
        yield api


def _assert_reveal_nothing(ids: list[Any], rows_in_table: int) -> None:
    """Random public ids: the format, unique, no sequence number, and not in the order written."""
    assert all(isinstance(i, str) and AUDIT_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    # No id is (or hides) a position in the table: a number no larger than its row count.
    assert all(int(i.removeprefix("aud_"), 16) > rows_in_table for i in ids), ids
    # Newest first, but the ids themselves carry no order (10 random ids sort in time order by chance
    # once in 3.6 million runs).
    assert ids != sorted(ids) and ids != sorted(ids, reverse=True)


def test_a_tenants_audit_ids_do_not_count_other_tenants_writes(
    admin_api: tuple[TestClient, dict[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    client, headers = admin_api
    # Interleaved writes: every key alpha creates is followed by two of beta's.
    for i in range(10):
        for tenant, times in (("alpha", 1), ("beta", 2)):
            for j in range(times):
                made = client.post(
                    "/v1/admin/keys", json={"name": f"k{i}-{j}", "role": "reader"}, headers=headers[tenant]
                )
                assert made.status_code == 201, made.text

    answer = client.get("/v1/admin/audit", headers=headers["alpha"])
    assert answer.status_code == 200
    entries = answer.json()["entries"]
    assert [e["action"] for e in entries] == ["key.create"] * 10
    assert {e["tenant"] for e in entries} == {"alpha"}
    assert all(set(e) == ENTRY_FIELDS for e in entries), entries[0]
    # The only numbers in an entry are its time and status: no row number under another name.
    numbers = {k for e in entries for k, v in e.items() if isinstance(v, int | float)}
    assert numbers <= {"at", "status"}, entries
    ids = [e["id"] for e in entries]
    _assert_reveal_nothing(ids, rows_in_table=30)
    beta_ids = [e["id"] for e in client.get("/v1/admin/audit", headers=headers["beta"]).json()["entries"]]
    assert len(beta_ids) == 20 and not set(beta_ids) & set(ids)

    # `ragserver audit` shows the same ids (on the same database).
    monkeypatch.setenv("RAGSERVER_DATA_DIR", str(tmp_path / "data"))
    listed = CliRunner().invoke(cli, ["audit", "--tenant", "alpha"])
    assert listed.exit_code == 0, listed.output
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == ids


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_entries_written_before_public_ids_get_random_ones(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A database at the revision before public ids, holding entries, is upgraded: every entry gets a
    random unique id, the listing keeps its order, and the column refuses NULL and duplicates."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'ragserver.sqlite3'}"
        _upgraded_from_0006(url)
    else:
        with temporary_postgres_database(request.getfixturevalue("postgres_url")) as url:
            _upgraded_from_0006(url)


def _upgraded_from_0006(url: str) -> None:
    from app.auth.audit import AuditEntry, AuditLog

    command.upgrade(alembic_config(url), "0006")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for i in range(12):
                conn.execute(
                    sa.text(
                        "INSERT INTO audit_log (at, tenant, actor, action, outcome, object_id)"
                        " VALUES (:at, :tenant, 'cli', 'key.create', 'ok', :object_id)"
                    ),
                    {"at": 1000.0 + i // 2, "tenant": "ab"[i % 2], "object_id": str(i)},
                )
        migrate(engine)
        log = AuditLog(engine)
        alpha = log.query(tenant="a")
        # Newest first; entries of one second stay in the order written.
        assert [e.object_id for e in alpha] == ["10", "8", "6", "4", "2", "0"]
        _assert_reveal_nothing([e.id for e in log.query()], rows_in_table=12)
        log.write(AuditEntry(tenant="a", actor="cli", action="key.revoke", outcome="ok", at=2000.0))
        assert AUDIT_ID.fullmatch(log.query(tenant="a", limit=1)[0].id)  # type: ignore[arg-type]
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO audit_log (at, tenant, actor, action, outcome)"
                    " VALUES (1.0, 'a', 'cli', 'x', 'ok')"
                )
            )
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            taken = alpha[0].id
            conn.execute(
                sa.text(
                    "INSERT INTO audit_log (public_id, at, tenant, actor, action, outcome)"
                    " VALUES (:taken, 1.0, 'a', 'cli', 'x', 'ok')"
                ),
                {"taken": taken},
            )
    finally:
        engine.dispose()
