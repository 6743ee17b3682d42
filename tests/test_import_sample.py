"""run_import's preview lists at most 20 rejected rows by default (the first ones), and counts them all."""

from __future__ import annotations

from state.imports import run_import
from state.models import Rejected
from state.store import Store


def test_the_default_rejected_sample_is_the_first_twenty_of_all_the_rejected_rows(tmp_path):
    rows = [Rejected(f"row {i}", f"bad{i}", "not an address") for i in range(2, 27)] + ["a@example.com"]
    with Store(tmp_path / "store.db") as store:
        preview = run_import(store, iter(rows), scope="*", reason="imported", confirm=None, source="import:list.csv")
    assert preview.rejected_count == 25 and preview.valid == 1
    assert [r.where for r in preview.rejected_sample] == [f"row {i}" for i in range(2, 22)]
