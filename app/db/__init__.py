"""The relational system of record (job records today; API keys, audit log, traces, feedback next).

`make_engine(url)` builds a SQLAlchemy engine (SQLite file or PostgreSQL via psycopg 3); `migrate(url)`
brings its schema to the newest Alembic revision shipped in `app/db/migrations`.
"""

from app.db.engine import make_engine, masked, normalise_url
from app.db.migrate import alembic_config, current_revision, head_revision, migrate

__all__ = [
    "alembic_config",
    "current_revision",
    "head_revision",
    "make_engine",
    "masked",
    "migrate",
    "normalise_url",
]
