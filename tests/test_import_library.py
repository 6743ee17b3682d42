"""The count-confirmed import in the library (state/imports.py): counts over several batches, the
confirmation, what is stored, and errors that leave nothing behind.

Written for mutants a mutation run left alive there (docs/testing.md); each seen to fail on a broken copy.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time

import pytest

from state import imports
from state.errors import RefusedError, StoreError
from state.imports import run_import, saved_count
from state.models import OptOut, Page, Rejected
from state.store import Store

ROWS = ["a@example.com", Rejected("row 2", "x", "no @ in address"), "b@example.com", "a@example.com",
        "c@example.com", Rejected("row 6", "y", "no @ in address"), "held@example.com", "d@example.com"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(imports, "CHUNK", 3)  # several batches from a few rows
    with Store(tmp_path / "store.db") as store:
        store.ingest_page("crm", Page([OptOut("held@example.com")]))
        store.promote("crm")
        yield store


def preview_of(store, confirm=None, rows=ROWS, **kw):
    return run_import(store, iter(rows), scope="*", reason="imported", confirm=confirm, source="import:list.csv",
                      **kw)


def test_a_preview_counts_every_batch_and_changes_nothing(store):
    seen: list[Rejected] = []
    preview = preview_of(store, on_rejected=seen.append, sample_size=1)
    assert (preview.rows_read, preview.valid, preview.unique, preview.duplicates, preview.already_suppressed,
            preview.new, preview.rejected_count, preview.applied) == (8, 6, 5, 1, 1, 4, 2, False)
    assert [r.where for r in preview.rejected_sample] == ["row 2"] and [r.where for r in seen] == [
        "row 2", "row 6"]
    assert store.suppression("a@example.com") is None


def test_a_batch_without_rejected_rows_reports_none(store):
    preview = preview_of(store, rows=["a@example.com", "b@example.com", "c@example.com", "d@example.com"])
    assert (preview.rows_read, preview.rejected_count, preview.rejected_sample) == (4, 0, [])


def test_a_wrong_count_is_refused_and_the_right_one_stores_each_new_opt_out_once(store):
    with pytest.raises(RefusedError) as caught:
        preview_of(store, confirm=5)
    assert str(caught.value) == "the import would add 4 new opt-outs, not 5; nothing was changed"
    assert store.suppression("a@example.com") is None
    details = {"z": 1, "file": "list.csv"}
    preview = preview_of(store, confirm=4, legal_basis="consent", explanation="their list", details=details)
    assert (preview.applied, preview.new, preview.already_suppressed) == (True, 4, 1)
    row = store.conn.execute("SELECT reason, origin, source, details FROM suppressions WHERE address = ?",
                             ("a@example.com",)).fetchone()
    assert row == ("imported", "user", "import:list.csv", json.dumps(details, sort_keys=True))
    event = store.conn.execute("SELECT legal_basis, explanation FROM events WHERE address = ? AND kind = 'suppressed'",
                               ("d@example.com",)).fetchone()
    assert event == ("consent", "their list")
    assert saved_count(store, source="import:list.csv", details=details, since="2000-01-01") == 4
    assert saved_count(store, source="import:list.csv", details={"file": "other.csv"}, since="2000-01-01") == 0


def test_an_import_without_details_stores_none(store):
    preview_of(store, confirm=4)
    assert store.conn.execute("SELECT count(*) FROM suppressions WHERE details IS NULL AND source = ?",
                              ("import:list.csv",)).fetchone()[0] == 4


def test_a_row_the_stager_cannot_write_fails_the_import_and_nothing_is_kept(store):
    rows = ["a@example.com", "b@example.com", "c@example.com", "d@example.com", object()]
    with pytest.raises(TypeError):
        preview_of(store, confirm=4, rows=rows)
    assert store.suppression("a@example.com") is None
    assert store.conn.execute("SELECT count(*) FROM suppressions").fetchone()[0] == 1


def test_the_event_feed_reads_every_column_of_the_events_after_a_seq(store):
    preview_of(store, confirm=4)
    events = store.events_after(1, 2)
    assert [(e["seq"], e["kind"], e["address"], e["origin"]) for e in events] == [
        (2, "suppressed", "a@example.com", "user"), (3, "suppressed", "b@example.com", "user")]
    assert set(events[0]) >= {"seq", "recorded_at", "kind", "address", "scope", "reason", "source", "details"}


def _stage_in_a_thread(stager, batches: int) -> tuple[threading.Thread, list]:
    """Stage `batches` batches from a helper thread, so that a put() that blocks forever fails the test."""
    raised: list = []

    def stage():
        try:
            for _ in range(batches):
                stager.stage(["a@example.com"])
        except BaseException as exc:
            raised.append(exc)

    helper = threading.Thread(target=stage, daemon=True)
    helper.start()
    helper.join(timeout=10)
    return helper, raised


def test_staging_raises_instead_of_waiting_forever_when_the_stager_thread_has_stopped(store, monkeypatch):
    monkeypatch.setattr(imports, "_PUT_WAIT", 0.05)
    monkeypatch.setattr(imports._Stager, "_run", lambda self: None)   # a stager thread that ends at once
    stager = imports._Stager(store.conn)
    with pytest.raises(StoreError) as stopped:
        with stager:
            helper, raised = _stage_in_a_thread(stager, 5)   # more batches than the queue holds
            blocked = helper.is_alive()
            while helper.is_alive() or not stager._batches.empty():  # so that leaving cannot block either
                with contextlib.suppress(queue.Empty):
                    stager._batches.get(timeout=0.05)
            assert not blocked, "stage() blocked on a stager thread that had stopped"
            assert [str(e) for e in raised] == [
                "the import's staging thread stopped before the import ended; nothing was saved"]
            raise raised[0]
    assert "nothing was saved" in str(stopped.value)


def test_leaving_a_stager_whose_thread_stopped_early_is_an_error_not_a_short_count(store, monkeypatch):
    monkeypatch.setattr(imports._Stager, "_run", lambda self: None)
    stager = imports._Stager(store.conn)
    with pytest.raises(StoreError, match="staging thread stopped before the import ended"):
        with stager:
            stager._thread.join()   # it has stopped before anything was staged



def test_a_slow_stager_thread_is_waited_for_not_taken_for_stopped(store, monkeypatch):
    monkeypatch.setattr(imports, "_PUT_WAIT", 0.01)
    got: list = []

    def slow(self):
        # Ends after 2 s without a batch too, so that a stager that never sends the end cannot hang the test.
        with contextlib.suppress(queue.Empty):
            while (batch := self._batches.get(timeout=2)) is not None:
                time.sleep(0.05)   # five times the put's wait: the queue stays full for a while
                got.append(batch)

    monkeypatch.setattr(imports._Stager, "_run", slow)
    with imports._Stager(store.conn) as stager:
        for n in range(5):
            stager.stage([f"u{n}@example.com"])
    assert got == [[f"u{n}@example.com"] for n in range(5)]


def test_staging_has_a_larger_temp_cache_that_is_given_back_afterwards(store, monkeypatch):
    def temp_cache():
        return store.conn.execute("PRAGMA temp.cache_size").fetchone()[0]

    before = temp_cache()
    during = []
    real = type(store).suppress_selected

    def noting(self, *args, **kwargs):  # on the calling thread, once the stager has finished
        during.append(temp_cache())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(store), "suppress_selected", noting)
    with pytest.raises(RefusedError):
        preview_of(store, confirm=5)
    assert during == [-imports.STAGING_CACHE_KIB] and temp_cache() == before != -imports.STAGING_CACHE_KIB
    preview_of(store, confirm=4)
    assert len(during) == 2 and temp_cache() == before
