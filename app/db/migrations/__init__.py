"""Alembic environment and revisions (a package so that setuptools ships them; see app/db/migrate.py)."""
