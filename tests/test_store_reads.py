"""Store reads and checkpoint writes at their edges: export's filters and count, every checkpoint field.

Written for mutants a mutation run left alive in Store.iter_suppressions and Store.set_checkpoint.
"""

from __future__ import annotations

import pytest

from state.models import OptOut, Page, Resubscribe
from state.store import Store

ROWS = [
    OptOut("b@example.com", "*", "hard_bounce", "system", "2026-01-02T00:00:00.000000+00:00"),
    OptOut("a@example.com", "news", "unsubscribed", "recipient", "2026-01-01T00:00:00.000000+00:00"),
    OptOut("a@example.com", "*", "spam_complaint", "recipient", None),
    OptOut("c@example.com", "*", "unsubscribed", "recipient", "2026-01-03T00:00:00.000000+00:00"),
]


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store.db") as store:
        store.ingest_page("crm", Page(ROWS[:3]))
        store.promote("crm")
        store.ingest_page("esp", Page(ROWS[3:]))
        store.promote("esp")
        yield store


def rows(store, **filters):
    return [tuple(r) for r in store.iter_suppressions(**filters)]


def test_every_row_by_address_then_scope_with_an_unknown_date_as_empty_text(store):
    # The last column: where a recipient's own re-subscribe released it (none here).
    assert rows(store) == [
        ("a@example.com", "*", "spam_complaint", "recipient", "crm", "", ""),
        ("a@example.com", "news", "unsubscribed", "recipient", "crm", "2026-01-01T00:00:00.000000+00:00", ""),
        ("b@example.com", "*", "hard_bounce", "system", "crm", "2026-01-02T00:00:00.000000+00:00", ""),
        ("c@example.com", "*", "unsubscribed", "recipient", "esp", "2026-01-03T00:00:00.000000+00:00", ""),
    ]


def test_released_at_names_the_adapters_in_order_on_that_row_only(store):
    again = Resubscribe("a@example.com", "news", "recipient", "2026-02-01T00:00:00.000000+00:00", {"vendor": "x"})
    for adapter in ("esp", "crm"):
        store.ingest_page(adapter, Page(resubscribes=[again]), resubscribe_policy="local")
    assert [r[6] for r in rows(store)] == ["", "crm;esp", "", ""]


def test_filters_combine_and_the_callers_list_is_left_as_it_was(store):
    reasons = ["unsubscribed", "hard_bounce"]
    assert [r[0] for r in rows(store, reasons=reasons, scope="*", source="esp")] == ["c@example.com"]
    assert reasons == ["unsubscribed", "hard_bounce"]
    assert [r[:2] for r in rows(store, scope="news")] == [("a@example.com", "news")]
    assert [r[0] for r in rows(store, source="crm", reasons=["hard_bounce"])] == ["b@example.com"]


def test_since_is_inclusive_and_until_exclusive(store):
    day2 = "2026-01-02T00:00:00.000000+00:00"
    assert [r[0] for r in rows(store, since=day2, until="2026-01-03T00:00:00.000000+00:00")] == ["b@example.com"]
    assert [r[0] for r in rows(store, since=day2, source="esp")] == ["c@example.com"]


def test_count_is_one_row_with_the_number_of_matches(store):
    assert rows(store, count=True) == [(4,)]
    assert rows(store, reasons=["unsubscribed"], count=True) == [(2,)]
    assert rows(store, source="nobody", count=True) == [(0,)]


CHECKPOINT_FIELDS = {"read_cursor": "page-9", "cursor_at": "2026-01-01T00:00:00+00:00", "applied_seq": 42,
                     "last_reconcile_at": "2026-01-02T00:00:00+00:00",
                     "last_success_at": "2026-01-03T00:00:00+00:00", "reconcile_requested": True,
                     "paused": True, "paused_at": "2026-01-04T00:00:00+00:00"}


@pytest.mark.parametrize("field", sorted(CHECKPOINT_FIELDS))
def test_every_checkpoint_field_can_be_set_and_is_read_back(store, field):
    store.set_checkpoint("crm", **{field: CHECKPOINT_FIELDS[field]})
    assert getattr(store.checkpoint("crm"), field) == CHECKPOINT_FIELDS[field]


def test_an_unknown_checkpoint_field_is_refused_by_name(store):
    with pytest.raises(ValueError) as caught:
        store.set_checkpoint("crm", applied_seq=1, colour="red", size=3)
    assert str(caught.value) == "unknown checkpoint fields ['colour', 'size']"
    assert store.checkpoint("crm").applied_seq == 0
