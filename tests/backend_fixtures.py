"""The `store_backend` fixture (imported by tests/conftest.py): the `[store]` settings of either backend.

Parametrised "sqlite" / "postgresql", so an end-to-end test that starts the real `optout-sync`
process runs once on a SQLite file and once on a fresh PostgreSQL database of the session's
throwaway cluster (tests/pg_fixtures.py), named through `url_file`, the way an operator keeps the
URL's password out of the settings. Tests read the store back through `Backend.open`, which goes
through the same `open_store` the daemon uses, never through raw sqlite3.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Backend:
    """One backend's `[store]` settings for write_settings(store=...)."""

    name: str
    store: dict

    @property
    def postgresql(self) -> bool:
        return self.name == "postgresql"

    def open(self, settings_path: Path):
        """The store the settings at `settings_path` name, opened as the CLI and the daemon open it."""
        from connector.commands import open_store
        from connector.settings import load_settings

        store = open_store(load_settings(settings_path, environ={}))
        if store.dialect.name != self.name:  # the test would prove nothing about this backend
            store.close()
            raise AssertionError(f"{settings_path} opened a {store.dialect.name} store, not {self.name}")
        return store


def url_file(folder: Path, url: str) -> Path:
    """A 0600 secret file holding `url` (a URL may hold a password), in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "store-url"
    path.write_text(url + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


# The PostgreSQL half is marked, so that a run can leave it out (the mutation run: pyproject.toml).
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def store_backend(request, tmp_path) -> Backend:
    """`[store] path = "data/store.db"` (SQLite) or `[store] url_file` naming a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return Backend("sqlite", {"path": "data/store.db"})
    secret = url_file(tmp_path / "secrets", request.getfixturevalue("pg_url"))
    return Backend("postgresql", {"url_file": str(secret)})



@dataclass(frozen=True)
class BackendMaker:
    """`make(folder)`: a fresh store's Backend per call, all of backend `name`."""

    name: str
    make: object


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def fresh_backends(request) -> BackendMaker:
    """A maker of a fresh store's settings per call, for a test that needs many (one per crash point).

    SQLite: `[store] path = "store.db"` (beside the settings in `folder`); PostgreSQL: `url_file` (in
    `folder`) naming a new database, dropped after the test.
    """
    if request.param == "sqlite":
        return BackendMaker("sqlite", lambda folder: Backend("sqlite", {"path": "store.db"}))
    new_url = request.getfixturevalue("pg_urls")
    return BackendMaker("postgresql", lambda folder: Backend(
        "postgresql", {"url_file": str(url_file(folder / "secrets", new_url()))}))
