"""Small edges: the reason given for an invalid address of exactly the length limit, a store without an
identity, and missing_at_source's default diff. Written for mutants a mutation run left alive."""

from __future__ import annotations

from state.addresses import MAX_ADDRESS, explain_invalid
from state.store import Store


def test_an_address_at_the_length_limit_is_explained_by_its_real_fault():
    at_limit = "a" * (MAX_ADDRESS - len("example.com")) + "example.com"
    assert len(at_limit) == MAX_ADDRESS
    assert explain_invalid(at_limit) == "no @ in address"
    assert explain_invalid(at_limit + "m") == f"address longer than {MAX_ADDRESS} characters"


def test_a_store_without_an_identity_row_has_no_id(tmp_path):
    with Store(tmp_path / "store.db") as store:
        assert isinstance(store.store_id(), str) and store.store_id()
        with store.transaction():
            store.conn.execute("DELETE FROM store_meta WHERE key = 'store_id'")
        assert store.store_id() is None


def test_missing_at_source_diffs_against_the_source_set_by_default(tmp_path):
    from state.models import OptOut, Page

    with Store(tmp_path / "store.db") as store:
        store.ingest_page("src", Page([OptOut("ann@x.io"), OptOut("bob@x.io")]))
        store.promote("src")
        store.begin_source_set()
        store.add_to_source_set([OptOut("ann@x.io")])
        found = [(o.address, o.scope) for rows in store.missing_at_source(set(), False, 10) for _, o in rows]
        assert found == [("bob@x.io", "*")]
