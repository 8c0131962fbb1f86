"""The collection `VersionRegistry` contract on the system of record: a migrated SQLite file and a real
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from app.db import make_engine, migrate
from app.db.tables import collection_aliases, collection_versions
from app.services.collection_versions import VersionRegistry
from tests.conftest_services import emptied_tables
from tests.contract.version_registry_contract import RegistryFactory, VersionRegistryContract

pytestmark = pytest.mark.integration


class SQLRegistryTests(VersionRegistryContract):
    """A subclass provides `database_url`: a migrated database without versions."""

    @pytest.fixture
    def make_registry(self, database_url: str) -> Iterator[RegistryFactory]:
        engines: list[Engine] = []

        def factory() -> VersionRegistry:
            engines.append(make_engine(database_url))
            return VersionRegistry(engines[-1])

        yield factory
        for engine in engines:
            engine.dispose()


class TestSQLiteVersionRegistry(SQLRegistryTests):
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        url = f"sqlite:///{tmp_path / 'data' / 'ragserver.sqlite3'}"
        migrate(url)
        return url


class TestPostgresVersionRegistry(SQLRegistryTests):
    @pytest.fixture
    def database_url(self, postgres_url: str) -> str:
        # One database for the session; each test starts without versions.
        return emptied_tables(postgres_url, collection_aliases, collection_versions)
