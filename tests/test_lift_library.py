"""The audited lift in the library (state/lifts.py): refusals worded whole, holders, removal outcomes.

Written for mutants a mutation run left alive there (docs/testing.md); each seen to fail on a broken copy.
"""

from __future__ import annotations

import pytest

from state.errors import InputError, RefusedError
from state.lifts import LEGAL_BASES, holders, lift, record_removal
from state.models import OptOut, Page
from state.store import Store


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store.db") as store:
        store.ingest_page("crm", Page([OptOut("spam@example.com", "*", "spam_complaint", "recipient"),
                                       OptOut("own@example.com", "*", "unsubscribed", "recipient"),
                                       OptOut("hb@example.com", "*", "hard_bounce", "system"),
                                       OptOut("user@example.com", "*", "manual", "user")]))
        store.promote("crm")
        yield store


@pytest.mark.parametrize("address, why", [
    ("spam@example.com", "it is a spam complaint; spam complaints are never lifted"),
    ("own@example.com", "the recipient made it; only the recipient can undo it"),
    ("hb@example.com", "it is a hard bounce reported by a system, not a user's opt-out"),
])
def test_each_refusal_names_the_address_scope_and_why(store, address, why):
    with pytest.raises(RefusedError) as caught:
        lift(store, address, "*", "consent", "asked", by="ops")
    assert str(caught.value) == f"cannot lift the opt-out of {address} (scope '*'): {why}"
    assert store.suppression(address) is not None


def test_a_wrong_legal_basis_lists_every_allowed_one_and_a_blank_explanation_is_refused(store):
    with pytest.raises(InputError) as caught:
        lift(store, "user@example.com", "*", "because", "asked", by="ops")
    assert str(caught.value) == ("legal basis 'because' is not one of consent, contract, legal_obligation, "
                                 "vital_interests, public_task, legitimate_interest")
    assert len(LEGAL_BASES) == 6
    with pytest.raises(InputError) as caught:
        lift(store, "user@example.com", "*", "consent", "  ", by="ops")
    assert str(caught.value) == "an explanation is required to lift an opt-out"
    assert store.suppression("user@example.com") is not None


def test_an_address_never_suppressed_has_no_holders(store):
    assert holders(store, "nobody@example.com", "*") == (None, [])
    assert holders(store, "user@example.com", "*") == ("crm", [])


@pytest.mark.parametrize("ok, kind", [(True, "removed"), (False, "remove_failed")])
def test_a_removal_outcome_is_one_event_of_its_kind(store, ok, kind):
    record_removal(store, "user@example.com", "*", "esp", ok, "vendor said so")
    events = store.conn.execute("SELECT kind, address, scope, target, message FROM events"
                                " WHERE kind LIKE 'remove%'").fetchall()
    assert events == [(kind, "user@example.com", "*", "esp", "vendor said so")]
