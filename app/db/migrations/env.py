"""Alembic environment: runs revisions on the connection `app.db.migrate` passes in.

Without one (an Alembic command that connects by itself, e.g. `revision --autogenerate`), it connects
to the config's `sqlalchemy.url`.
"""

from __future__ import annotations

from alembic import context

from app.db.engine import make_engine
from app.db.tables import metadata

config = context.config


def _run(connection: object) -> None:
    context.configure(connection=connection, target_metadata=metadata)  # type: ignore[arg-type]
    # Inside `migrate()`'s transaction this joins it; on a bare connection it opens one.
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _run(connection)
else:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as own_connection:
            _run(own_connection)
            own_connection.commit()
    finally:
        engine.dispose()
