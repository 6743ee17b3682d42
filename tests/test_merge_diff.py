"""The merge diff of a sink's full read (state/merge_diff.py) gives exactly what the temp-table diff gives."""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings as hyp_settings, strategies as st

from state.merge_diff import SinkMerge
from state.models import OptOut, Page
from state.store import Store

ADDRESSES = [f"{name}@x.io" for name in ("ann", "bob", "cat", "dan", "eve", "fay", "gus")]
SCOPES = ["*", "news", "deals"]
keys = st.tuples(st.sampled_from(ADDRESSES), st.sampled_from(SCOPES))


def missing(store: Store, read: list[OptOut], page: int, sink_scopes: set[str], as_global: bool,
            merged: bool) -> list[tuple[int, str, str]]:
    if merged:
        merge = SinkMerge(store, sink_scopes, as_global)
        for start in range(0, len(read), page):
            merge.feed(read[start:start + page])
        merge.finish()
    else:
        store.begin_source_set()
        for start in range(0, len(read), page):
            store.add_to_source_set(read[start:start + page])
    return [(seq, o.address, o.scope) for rows in store.missing_at_source(sink_scopes, as_global, 3, merged=merged)
            for seq, o in rows]


@hyp_settings(max_examples=200, deadline=None)
@given(stored=st.sets(keys), held=st.lists(keys), order=st.sampled_from(["sorted", "as given", "sorted runs"]),
       page=st.integers(1, 5), sink_scopes=st.sets(st.sampled_from(["news", "deals"])), as_global=st.booleans(),
       store_page=st.integers(1, 4))
def test_the_merge_finds_exactly_what_the_temp_table_finds(tmp_path_factory, stored, held, order, page,
                                                           sink_scopes, as_global, store_page):
    """Whatever the read's order, page size, the sink's topics and the store's page (which may cut an address)."""
    path = tmp_path_factory.mktemp("merge") / "store.db"
    with Store(path) as store:
        if stored:
            store.ingest_page("src", Page([OptOut(a, s) for a, s in sorted(stored)]))
            store.promote("src")
        if order == "sorted":
            held = sorted(held)
        elif order == "sorted runs":   # as a csv_file holds them: batches appended, each sorted
            held = sorted(held[:len(held) // 2]) + sorted(held[len(held) // 2:])
        read = [OptOut(a, s) for a, s in held]
        expected = missing(store, read, page, sink_scopes, as_global, merged=False)
        with mock.patch("state.merge_diff.STORE_PAGE", store_page):
            assert missing(store, read, page, sink_scopes, as_global, merged=True) == expected


def test_a_sorted_read_goes_by_merge_alone(tmp_path):
    with Store(tmp_path / "store.db") as store:
        store.ingest_page("src", Page([OptOut(a) for a in ADDRESSES]))
        store.promote("src")
        merge = SinkMerge(store, set(), False)
        merge.feed([OptOut(a) for a in ADDRESSES[1:4]] + [OptOut("zed@x.io")])
        merge.finish()
        assert (merge.in_order, merge.out_of_order) == (4, 0)
        assert store.conn.execute("SELECT count(*) FROM source_set").fetchone()[0] == 0
        found = [o.address for rows in store.missing_at_source(set(), False, 10, merged=True) for _, o in rows]
        assert found == ["ann@x.io", "eve@x.io", "fay@x.io", "gus@x.io"]
