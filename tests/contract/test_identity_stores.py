"""Keys, tenants and the audit log behave the same on SQLite and PostgreSQL (the system of record)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from app.auth.audit import AuditEntry, AuditLog
from app.auth.keys import KeyStore, hash_key
from app.db import make_engine, migrate
from tests.conftest_services import temporary_postgres_database

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ragserver.sqlite3'}"
        built = make_engine(url)
        migrate(built)
        yield built
        built.dispose()
        return
    postgres_url = request.getfixturevalue("postgres_url")
    with temporary_postgres_database(postgres_url) as url:
        built = make_engine(url)
        migrate(built)
        yield built
        built.dispose()


def test_keys_are_stored_hashed_looked_up_listed_and_revoked(engine: Engine) -> None:
    keys = KeyStore(engine)
    record, key = keys.create(
        tenant="acme", name="bot", role="writer", collections=["hr", "hr", "legal"], rpm=5
    )
    assert record.collections == ("hr", "legal") and record.rpm == 5 and record.tpm is None
    assert record.prefix == key[:12] and record.is_active()
    assert keys.lookup(key) == record and keys.lookup(key + "x") is None
    other, _ = keys.create(tenant="beta", name="bot", role="reader")
    assert keys.tenants() == ["acme", "beta"]
    assert [k.key_id for k in keys.list_keys("acme")] == [record.key_id]
    assert {k.key_id for k in keys.list_keys()} == {record.key_id, other.key_id}
    assert keys.get(record.key_id, tenant="beta") is None
    assert keys.revoke(record.key_id, tenant="beta") is None  # not beta's
    revoked = keys.revoke(record.key_id, tenant="acme")
    assert revoked is not None and not revoked.is_active()
    assert keys.revoke(record.key_id) == revoked  # again: unchanged
    with engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.exec_driver_sql("SELECT * FROM api_keys") for v in row)
    assert key not in stored and hash_key(key) in stored
    assert len(keys.secret("document_id_key")) == 32


def test_expiry_and_bad_input(engine: Engine) -> None:
    keys = KeyStore(engine)
    record, key = keys.create(tenant="acme", name="short", role="reader", expires_in_s=0.05)
    assert record.is_active()
    time.sleep(0.1)
    assert not keys.lookup(key).is_active()  # type: ignore[union-attr]
    for bad in (
        {"tenant": "Acme", "name": "x", "role": "reader"},
        {"tenant": "acme", "name": "x", "role": "owner"},
        {"tenant": "acme", "name": " ", "role": "reader"},
        {"tenant": "acme", "name": "x", "role": "reader", "collections": []},
        {"tenant": "acme", "name": "x", "role": "reader", "rpm": 0},
        {"tenant": "acme", "name": "x", "role": "reader", "expires_in_s": -1},
    ):
        with pytest.raises(ValueError):
            keys.create(**bad)  # type: ignore[arg-type]


def test_audit_entries_by_tenant_newest_first(engine: Engine) -> None:
    log = AuditLog(engine)
    now = time.time()
    for i, (tenant, action) in enumerate(
        [("a", "document.upload"), ("b", "key.create"), ("a", "document.delete")]
    ):
        log.write(
            AuditEntry(tenant=tenant, actor="cli", action=action, outcome="ok", at=now + i, object_id=str(i))
        )
    assert [e.object_id for e in log.query(tenant="a")] == ["2", "0"]
    assert [e.action for e in log.query(tenant="a", since=now + 1)] == ["document.delete"]
    assert [e.tenant for e in log.query(action="key.create")] == ["b"]
    assert len(log.query(limit=2)) == 2
