"""Clean-up snapshots in the store (state/snapshots.py), without a vendor: candidates, latest, outcomes.

Written for mutants a mutation run left alive there (docs/testing.md); each seen to fail on a broken copy.
"""

from __future__ import annotations

import json

from state import snapshots
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
