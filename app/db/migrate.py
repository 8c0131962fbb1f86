"""Alembic migrations run from code: no alembic.ini at run time, the scripts ship in `app/db/migrations`.

To add a revision (a new table), from the repository root::

    python -c "from alembic import command; from app.db import alembic_config; \
command.revision(alembic_config(), 'add api keys', rev_id='0002')"

then fill in `upgrade()`/`downgrade()` in the new file under app/db/migrations/versions/.
"""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Engine

from app.db.engine import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant works; it only has to be the same for every process migrating one PostgreSQL database.
_POSTGRES_MIGRATION_LOCK = 0x7261_6773  # "rags"
# Alembic's `context` and `op` are process-wide proxies: two migrations running at once in one process
# (two threads) would run each other's operations, so they take turns.
_IN_PROCESS_LOCK = threading.Lock()


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic Config for the packaged migrations (and `url`, for Alembic commands that connect)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolates '%', which a URL-encoded password may contain.
        rendered = sa.make_url(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    """The newest revision the packaged migrations define."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def migrate(target: str | URL | Engine) -> str | None:
    """Upgrade the database at `target` (a URL or an Engine) to the newest revision; returns it.

    Idempotent and safe when several processes start at once: they take turns (a PostgreSQL advisory
    lock, SQLite's write lock), and all but the first find nothing left to do.
    """
    engine = target if isinstance(target, Engine) else make_engine(target)
    try:
        config = alembic_config()
        # One transaction for the lock and every revision: a failed migration leaves nothing half-done.
        with _IN_PROCESS_LOCK, engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_MIGRATION_LOCK}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        if engine is not target:
            engine.dispose()
