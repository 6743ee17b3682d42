"""The `any_store` fixture (imported by tests/conftest.py): an open store of either backend.

Parametrised "sqlite" / "postgresql", so a contract test runs once on state/store.py's Store and
once on state/pg_store.py's PgStore. The PostgreSQL store gets a fresh database of the session's
throwaway cluster (tests/pg_fixtures.py); the cluster starts only when such a test runs.
"""

from __future__ import annotations

import pytest


# The PostgreSQL half is marked, so that a run can leave it out (the mutation run: pyproject.toml).
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def any_store(request, tmp_path):
    """An open Store (SQLite, in tmp_path) or PgStore (a new database), closed after the test."""
    if request.param == "sqlite":
        from state.store import Store

        store = Store(tmp_path / "store.db")
    else:
        from state.pg_store import PgStore

        store = PgStore(request.getfixturevalue("pg_url"))
    try:
        yield store
    finally:
        store.close()
