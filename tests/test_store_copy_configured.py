"""`store copy` without --from copies the configured store, whichever backend the settings name."""

from __future__ import annotations

import pytest

from connector import store_copy

from .backend_fixtures import url_file
from .conftest import write_settings
from .process import run_cli
from .test_store_copy import build_history, sqlite_tables

pytestmark = pytest.mark.postgresql


def test_the_default_source_is_the_configured_postgresql_store(tmp_path, pg_url):
    history = tmp_path / "history.db"
    build_history(history)
    store_copy.copy_store(history, pg_url)
    settings = write_settings(tmp_path, [{"name": "inbox", "type": "csv_folder", "path": "inbox"}],
                              store={"url_file": str(url_file(tmp_path / "secrets", pg_url))})
    back = tmp_path / "back.db"

    result = run_cli("--config", str(settings), "store", "copy", "--to", str(back), timeout=300)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("copied the store PostgreSQL database ")
    assert "verified: every table's row count and checksum are equal on both sides" in result.stdout
    assert sqlite_tables(back) == sqlite_tables(history)
    assert not (tmp_path / "optout-sync.db").exists()  # [store] path's default was not taken for the source
