"""`ragserver db ...`: the relational database (job records, ...)."""

from __future__ import annotations

import json

import typer

from app.cli.common import fail

db_app = typer.Typer(help="The relational database: schema migrations.", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade() -> None:
    """Migrate the configured database (RAGSERVER_DATABASE_URL) to the newest schema; the last line is JSON.

    The server also migrates at start-up; this runs it ahead of a deploy, or after a failed start.
    """
    import sqlalchemy as sa

    from app.db import masked, migrate, normalise_url
    from app.settings import Settings

    url = normalise_url(Settings().database_url)
    try:
        revision = migrate(url)
    except sa.exc.SQLAlchemyError as exc:
        fail(f"cannot migrate {masked(url)}: {type(exc).__name__}: {exc}", code=1)
    typer.echo(f"database {masked(url)} is at revision {revision}")
    typer.echo(json.dumps({"database": masked(url), "revision": revision}))
