"""The merge diff (state/merge_diff.py) at its edges: a row out of order mid-page, duplicate rows, the
counts over pages, several flushes, and a store whose seq order is not its address order.

Written for mutants a mutation run left alive in SinkMerge.
"""

from __future__ import annotations

from unittest import mock

from state.merge_diff import SinkMerge
from state.models import OptOut, Page
from state.store import Store

ANN, BOB, CAT, DAN, EVE, FAY, GUS = (f"{n}@x.io" for n in ("ann", "bob", "cat", "dan", "eve", "fay", "gus"))


def stored(path, *batches):
    """A store holding the addresses as all-email suppressions, each batch promoted in turn (seq order)."""
    store = Store(path)
    for batch in batches:
        store.ingest_page("src", Page([OptOut(a) for a in batch]))
        store.promote("src")
    return store


def merged(store, pages, scopes=(), as_global=False):
    merge = SinkMerge(store, set(scopes), as_global)
    for page in pages:
        merge.feed([OptOut(a) for a in page])
    merge.finish()
    found = [o.address for rows in store.missing_at_source(set(scopes), as_global, 10, merged=True) for _, o in rows]
    return merge, found


def test_rows_after_one_out_of_order_in_the_same_page_are_still_merged(tmp_path):
    with stored(tmp_path / "store.db", [ANN, BOB, CAT, DAN]) as store:
        merge, found = merged(store, [[BOB, ANN, CAT]])
        assert found == [DAN]
        assert (merge.in_order, merge.out_of_order) == (2, 1)


def test_the_counts_add_up_over_pages_with_duplicates_and_a_digit_first_address(tmp_path):
    with stored(tmp_path / "store.db", [ANN, BOB, CAT, DAN]) as store:
        merge, found = merged(store, [["0ne@x.io", ANN, ANN], [BOB, ANN], [CAT, BOB]])
        assert found == [DAN]
        assert (merge.in_order, merge.out_of_order) == (5, 2)
        assert store.conn.execute("SELECT count(*) FROM source_set").fetchone()[0] == 2


def test_missing_seqs_written_in_several_flushes_are_all_found(tmp_path):
    with stored(tmp_path / "store.db", [ANN, BOB, CAT, DAN, EVE, FAY, GUS]) as store:
        with mock.patch("state.merge_diff.FLUSH", 2):
            merge, found = merged(store, [[CAT], [FAY]])
        assert found == [ANN, BOB, DAN, EVE, GUS]


def test_held_as_all_email_the_store_is_walked_in_address_order_not_seq_order(tmp_path):
    with stored(tmp_path / "store.db", [GUS], [ANN], [DAN]) as store:
        merge, found = merged(store, [[ANN, DAN, GUS]], as_global=True)
        assert found == []
        merge, found = merged(store, [[ANN, GUS]], as_global=True)
        assert found == [DAN]
