"""Two small edges: the reason given for an invalid address of exactly the length limit, and a store
without an identity. Written for mutants a mutation run left alive."""

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
