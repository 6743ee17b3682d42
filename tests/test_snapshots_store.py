"""Clean-up snapshots in the store (state/snapshots.py), without a vendor: candidates, latest, outcomes.

Written for mutants a mutation run left alive there (docs/testing.md); each seen to fail on a broken copy.
"""

from __future__ import annotations

import itertools
import json

import pytest

from state import snapshots
from state.errors import InputError
from state.models import OptOut, Page
from state.store import Store


def seed(store: Store, addresses: list[str], reason: str = "hard_bounce") -> None:
    store.ingest_page("inbox", Page([OptOut(a, "*", reason, "system", "2024-03-02T10:00:00+00:00") for a in addresses]))
    store.promote("inbox")


def test_candidates_start_before_any_address_and_a_page_holds_500(tmp_path):
    with Store(tmp_path / "store.db") as store:
        # Digits and capitals sort before lower-case letters: the first page must not skip them.
        seed(store, ["0ann@example.com", "9bob@example.com"] + [f"p{n:03}@example.com" for n in range(499)])
        page = snapshots.candidates(store, "hard_bounce")
        assert len(page) == 500
        assert [c.address for c in page[:2]] == ["0ann@example.com", "9bob@example.com"]
        rest = snapshots.candidates(store, "hard_bounce", after=page[-1].address)
        assert [c.address for c in rest] == ["p498@example.com"]


def test_no_ready_snapshot_is_none_and_the_newest_ready_one_is_latest(tmp_path):
    with Store(tmp_path / "store.db") as store:
        assert snapshots.latest(store, "crm", "hard_bounce") is None
        for name in ("first", "second"):
            snapshots.create(store, name, "crm", "hard_bounce", since=None, until=None, categories=None)
        assert snapshots.latest(store, "crm", "hard_bounce") is None   # still building
        snapshots.finish(store, "first", 0)
        snapshots.finish(store, "second", 0)
        assert snapshots.latest(store, "crm", "hard_bounce")["name"] == "second"
        assert snapshots.latest(store, "crm", "spam_complaint") is None


def test_each_deletion_outcome_is_kept_per_contact_and_in_the_event_log(tmp_path):
    with Store(tmp_path / "store.db") as store:
        seed(store, ["a@example.com", "b@example.com"])
        snapshots.create(store, "s1", "crm", "hard_bounce", since=None, until=None, categories=None)
        snapshots.add_members(store, "s1", [("11", "a@example.com", None, None), ("12", "b@example.com", None, None)])
        snapshots.finish(store, "s1", 0)
        [batch] = list(snapshots.members(store, "s1"))
        outcomes = [(batch[0], True, ""), (batch[1], False, "contact is locked")]
        snapshots.record_deletions(store, "s1", "crm", "hard_bounce", outcomes)
        assert [(m.contact_id, m.outcome, m.message) for m in next(snapshots.members(store, "s1"))] == [
            ("11", "deleted", ""), ("12", "failed", "contact is locked")]
        assert [m.contact_id for m in next(snapshots.members(store, "s1", pending_only=True))] == ["12"]
        events = store.conn.execute(
            "SELECT kind, address, target, message, details FROM events WHERE kind LIKE 'contact_%' ORDER BY seq"
        ).fetchall()
        assert [(k, a, t, m, json.loads(d)) for k, a, t, m, d in events] == [
            ("contact_deleted", "a@example.com", "crm", "contact 11 deleted (snapshot s1); the suppression stays",
             {"contact_id": "11", "snapshot": "s1"}),
            ("contact_delete_failed", "b@example.com", "crm",
             "contact 12 not deleted (snapshot s1): contact is locked", {"contact_id": "12", "snapshot": "s1"}),
        ]
        assert snapshots.load(store, "s1")["state"] == "ready" and snapshots.load(store, "s1")["pending"] == 1
        snapshots.record_deletions(store, "s1", "crm", "hard_bounce", [(batch[1], True, "")])
        assert snapshots.load(store, "s1")["state"] == "deleted" and snapshots.load(store, "s1")["pending"] == 0
        assert store.suppression("b@example.com") is not None  # the suppression stays


def test_candidates_of_another_reason_are_refused_by_name(tmp_path):
    with Store(tmp_path / "store.db") as store:
        with pytest.raises(InputError) as refused:
            snapshots.candidates(store, "unsubscribed")
    assert str(refused.value) == "reason 'unsubscribed' is not one of hard_bounce, spam_complaint"


def test_candidates_match_any_of_several_bounce_categories_with_the_events_date_and_category(tmp_path):
    with Store(tmp_path / "store.db") as store:
        store.ingest_page("inbox", Page([
            OptOut("a@example.com", "*", "hard_bounce", "system", "2024-03-02T10:00:00+00:00",
                   {"bounce_category": "general"}),
            OptOut("b@example.com", "*", "hard_bounce", "system", "2024-03-03T11:00:00+00:00",
                   {"bounce_category": "mailbox_full"}),
            OptOut("c@example.com", "*", "hard_bounce", "system", "2024-03-04T12:00:00+00:00",
                   {"bounce_category": "dns"})]))
        store.promote("inbox")
        found = snapshots.candidates(store, "hard_bounce", categories=["general", "mailbox_full"])
        assert found == [
            snapshots.Candidate("a@example.com", "2024-03-02T10:00:00.000000+00:00", "general"),
            snapshots.Candidate("b@example.com", "2024-03-03T11:00:00.000000+00:00", "mailbox_full")]
        assert [c.address for c in snapshots.candidates(store, "hard_bounce", categories=["dns"])] == [
            "c@example.com"]


def test_a_snapshot_keeps_its_categories_and_its_name_is_taken_once(tmp_path):
    with Store(tmp_path / "store.db") as store:
        snapshots.create(store, "s1", "crm", "hard_bounce", since="2024-01-01", until=None,
                         categories=["general", "dns"])
        for name, categories in (("s2", None), ("s3", [])):
            snapshots.create(store, name, "crm", "hard_bounce", since=None, until=None, categories=categories)
        loaded = snapshots.load(store, "s1")
        assert (loaded["categories"], loaded["since"], loaded["state"], loaded["count"]) == (
            ["general", "dns"], "2024-01-01", "building", 0)
        assert set(loaded) == {c[1] for c in store.conn.execute("PRAGMA table_info(snapshots)")} | {
            "count", "pending"}
        assert snapshots.load(store, "s2")["categories"] is None and snapshots.load(store, "s3")["categories"] is None
        # No categories is stored as NULL, not as JSON text.
        assert store.conn.execute("SELECT name, categories FROM snapshots ORDER BY name").fetchall() == [
            ("s1", '["general", "dns"]'), ("s2", None), ("s3", None)]
        with pytest.raises(InputError) as taken:
            snapshots.create(store, "s1", "crm", "spam_complaint", since=None, until=None, categories=None)
        assert str(taken.value) == "a snapshot named 's1' exists already; choose another name"
        assert snapshots.load(store, "s1")["reason"] == "hard_bounce"


def test_members_come_in_address_then_contact_order_across_batches(tmp_path):
    """Digits sort before letters, and one address may have several contacts: no batch boundary skips any."""
    with Store(tmp_path / "store.db") as store:
        snapshots.create(store, "s1", "crm", "hard_bounce", since=None, until=None, categories=None)
        snapshots.add_members(store, "s1", [("301", "cat@example.com", None, None),
                                            ("202", "bob@example.com", None, None),
                                            ("201", "bob@example.com", None, None),
                                            ("101", "0ann@example.com", "2024-03-02T10:00:00+00:00", "general")])
        for batch in (1, 2, 500):
            # At most five batches: a paging key that does not advance would repeat rows forever.
            got = [[(m.contact_id, m.address) for m in part]
                   for part in itertools.islice(snapshots.members(store, "s1", batch=batch), 5)]
            assert sum(got, []) == [("101", "0ann@example.com"), ("201", "bob@example.com"),
                                    ("202", "bob@example.com"), ("301", "cat@example.com")], batch
            assert [len(part) for part in got] == {1: [1, 1, 1, 1], 2: [2, 2], 500: [4]}[batch]
        [first] = next(snapshots.members(store, "s1", batch=1))
        assert first == snapshots.Member("101", "0ann@example.com", "2024-03-02T10:00:00+00:00", "general", None, None)
