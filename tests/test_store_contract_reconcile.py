"""The Store contract beyond the core path, on both backends: re-subscribes and releases, the
reconcile's source set and merge diff (through the engine), snapshots, and the status page's and
metrics' numbers.

Every `any_store` test runs on SQLite (state/store.py) and on PostgreSQL (state/pg_store.py) and
asserts what the store holds afterwards; the last tests run one history on both and compare.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from connector.engine import Engine
from connector.metrics import Metrics
from connector.settings import validate_settings
from state import dashboard, resubscribes, snapshots
from state.models import ALREADY, APPLIED, ApplyResult, OptOut, Page, Rejected, Resubscribe, to_utc_iso
from state.store import PushOutcome

JAN, FEB = "2026-01-01T00:00:00.000000+00:00", "2026-02-01T00:00:00.000000+00:00"
MAR, MID_MAR, APR = ("2026-03-01T00:00:00.000000+00:00", "2026-03-15T00:00:00.000000+00:00",
                     "2026-04-01T00:00:00.000000+00:00")


def _kinds(store, address):
    return [e["kind"] for e in store.events_for(address)]


def _suppress(store, adapter, *optouts):
    store.ingest_page(adapter, Page(list(optouts)))
    return store.promote(adapter)


def _push(store, sink, outcome=APPLIED):
    """Push every pending event to `sink` with one outcome; the addresses sent."""
    pending, highest = store.pending_events(sink, store.checkpoint(sink).applied_seq, 100)
    store.mark_inflight(sink, [p.seq for p in pending])
    store.record_push(sink, [PushOutcome(p.seq, p.optout, ApplyResult(p.optout, outcome)) for p in pending], highest)
    return [p.optout.address for p in pending]


def _released_column(store):
    return {row[0]: row[6] for row in store.iter_suppressions()}


# -- re-subscribes and releases ---------------------------------------------------------------

def test_a_recipients_resubscribe_releases_the_optout_there_only_and_what_it_must_not_release(any_store):
    store = any_store
    _suppress(store, "src", OptOut("x@y.io", "*", "unsubscribed", "recipient", JAN),
              OptOut("h@y.io", "*", "hard_bounce", "system", JAN),
              OptOut("a@y.io", "*", "unsubscribed", "recipient", JAN),
              OptOut("old@y.io", "*", "unsubscribed", "recipient", FEB))
    assert _push(store, "esp") == ["x@y.io", "h@y.io", "a@y.io", "old@y.io"]

    page = Page([], cursor="e1", resubscribes=[
        Resubscribe("x@y.io", "*", "recipient", FEB, {"ip": "192.0.2.1"}),
        Resubscribe("h@y.io", "*", "recipient", FEB, {}),          # a hard bounce: never released
        Resubscribe("a@y.io", "*", "admin", FEB, {}),              # not the recipient
        Resubscribe("u@y.io", "*", "recipient", None, {}),         # never opted out: none of our business
        Resubscribe("a@y.io", "news", "recipient", FEB, {}),       # no opt-out of that scope
        Resubscribe("old@y.io", "*", "recipient", JAN, {}),        # before the opt-out: it overrode it
    ])
    counts = store.ingest_page("esp", page)
    assert counts.released == 1 and store.checkpoint("esp").read_cursor == "e1"
    assert resubscribes.release_counts(store) == {"esp": 1}
    assert resubscribes.releases_of(store, "x@y.io", "*") == ["esp"]
    assert resubscribes.releases_of(store, "h@y.io", "*") == []
    resubscribed = store.events_for("x@y.io")[-1]
    assert (resubscribed["kind"], resubscribed["source"], resubscribed["origin"], resubscribed["occurred_at"]) == (
        "resubscribed", "esp", "recipient", FEB)
    assert resubscribed["details"] == '{"ip":"192.0.2.1","resubscribe_by":"recipient"}'
    assert [(e["kind"], e["message"]) for e in store.events_for("h@y.io")][-1] == (
        "observed", "re-subscribe at esp not honoured: a hard bounce is never released; the opt-out stays")
    assert "made by admin, not by the recipient" in store.events_for("a@y.io")[-1]["message"]
    assert _kinds(store, "u@y.io") == [] and _kinds(store, "old@y.io") == ["suppressed", "applied"]
    # Released at esp only: still suppressed, still due at every other sink, never re-applied at esp.
    assert store.suppression("x@y.io")["reason"] == "unsubscribed"
    assert _released_column(store) == {"a@y.io": "", "h@y.io": "", "old@y.io": "", "x@y.io": "esp"}
    assert "x@y.io" in [p.optout.address for p in store.pending_events("crm", 0, 100)[0]]
    assert "x@y.io" not in [p.optout.address for p in store.pending_events("esp", 0, 100)[0]]
    assert store.pending_summary("crm", 0)[0] == 4 and store.pending_summary("esp", 0)[0] == 0

    # The same page read again (an overlap) records nothing twice, the undated refusal included.
    before = store.last_event_seq()
    store.ingest_page("esp", Page([], resubscribes=[*page.resubscribes,
                                                    Resubscribe("a@y.io", "*", "recipient", None, {})]))
    after = store.last_event_seq()
    assert [e["message"] for e in store.events_after(before, 10)] == [
        "re-subscribe at esp not honoured: the vendor does not date it; the opt-out stays"]
    store.ingest_page("esp", Page([], resubscribes=[Resubscribe("a@y.io", "*", "recipient", None, {})]))
    assert store.last_event_seq() == after

    # A newer dated opt-out, from any adapter, ends the release and asks esp to reconcile.
    store.ingest_page("src", Page([OptOut("x@y.io", "*", "unsubscribed", "recipient", MAR)]))
    ended = store.events_for("x@y.io")[-1]
    assert (ended["kind"], ended["source"], ended["target"], ended["occurred_at"]) == (
        "release_ended", "src", "esp", MAR)
    assert resubscribes.release_counts(store) == {} and store.checkpoint("esp").reconcile_requested
    assert _released_column(store)["x@y.io"] == ""


def test_a_resubscribe_under_policy_everywhere_lifts_and_is_removed_where_we_put_it(any_store):
    store = any_store
    _suppress(store, "src", OptOut("x@y.io", "*", "unsubscribed", "recipient", JAN), OptOut("k@y.io"))
    _push(store, "esp")
    _push(store, "crm")
    _push(store, "held", ALREADY)   # had it already: not ours to remove
    counts = store.ingest_page("esp", Page([], resubscribes=[Resubscribe("x@y.io", "*", "recipient", FEB, {"n": 1})]),
                               resubscribe_policy="everywhere")
    assert counts.released == 1
    assert store.suppression("x@y.io") is None and store.suppression("k@y.io") is not None
    resubscribed, lifted = store.events_for("x@y.io")[-2:]
    assert (lifted["kind"], lifted["legal_basis"], lifted["source"], lifted["reason"]) == (
        "lifted", "consent", "src", "unsubscribed")
    assert lifted["explanation"] == f"re-subscribed at esp by the recipient at {FEB} (n=1)"
    assert f'"resubscribe_seq":{resubscribed["seq"]}' in lifted["details"]
    assert [(seq, o.address) for seq, o in resubscribes.removals_due(store, "crm")] == [(lifted["seq"], "x@y.io")]
    assert resubscribes.removals_due(store, "held") == [] and resubscribes.removals_due(store, "esp") == []
    # An older opt-out read again stays lifted (the lift is dated by the re-subscribe); a newer one counts.
    assert store.ingest_page("src", Page([OptOut("x@y.io", "*", "unsubscribed", "recipient", JAN)])).ignored_lifted == 1
    resubscribes.finish_removal(store, "crm", lifted["seq"], OptOut("x@y.io"), True, "removed")
    removed = store.events_for("x@y.io")[-1]
    assert (removed["kind"], removed["target"], removed["ref_seq"]) == ("removed", "crm", lifted["seq"])
    assert resubscribes.removals_due(store, "crm") == []
    assert store.ingest_page("src", Page([OptOut("x@y.io", "*", "unsubscribed", "recipient", MAR)])).staged == 1
    store.promote("src")
    # A second lift moves the lift's date on: an opt-out dated between the two stays lifted.
    store.ingest_page("esp", Page([], resubscribes=[Resubscribe("x@y.io", "*", "recipient", APR, {})]),
                      resubscribe_policy="everywhere")
    assert store.suppression("x@y.io") is None
    between = store.ingest_page("src", Page([OptOut("x@y.io", "*", "unsubscribed", "recipient", MID_MAR)]))
    assert between.ignored_lifted == 1


def test_a_nul_in_an_address_or_scope_is_a_rejected_row_and_the_rest_of_the_page_is_kept(any_store):
    """PostgreSQL text cannot hold NUL: both backends reject such an item alone, never the whole page."""
    store = any_store
    _suppress(store, "src", OptOut("x@y.io", "*", "unsubscribed", "recipient", JAN))
    counts = store.ingest_page("a", Page(
        [OptOut("c@y.io"), OptOut("a\x00b@y.io"), OptOut("d@y.io", "ne\x00ws")],
        [Rejected("list.csv row 2", "nope", "no @")], cursor="c1",
        notices=[OptOut("n\x00@y.io")],
        resubscribes=[Resubscribe("x\x00@y.io", "*", "recipient", FEB, {}),
                      Resubscribe("x@y.io", "*", "recipient", FEB, {})]))
    assert (counts.read, counts.staged, counts.rejected, counts.released) == (1, 1, 5, 1)
    assert store.checkpoint("a").read_cursor == "c1" and store.staged_optouts("a") == [OptOut("c@y.io")]
    assert [(f["location"], f["value"], f["message"]) for f in store.failures("a")] == [
        ("list.csv row 2", "nope", "no @"),
        ("a: opt-out 2 of a page", "a\\x00b@y.io *", "NUL character in the address or scope"),
        ("a: opt-out 3 of a page", "d@y.io ne\\x00ws", "NUL character in the address or scope"),
        ("a: notice 1 of a page", "n\\x00@y.io *", "NUL character in the address or scope"),
        ("a: re-subscribe 1 of a page", "x\\x00@y.io *", "NUL character in the address or scope")]
    assert resubscribes.release_counts(store) == {"a": 1}
    # A full read's NUL rows are left out as well; the rest is staged.
    store.begin_source_set()
    store.add_to_source_set([OptOut("e@y.io"), OptOut("e\x00@y.io")])
    assert store.stage_from_source_set("r").staged == 1 and store.staged_optouts("r") == [OptOut("e@y.io")]


# -- the reconcile, through the engine ------------------------------------------------------------

def _engine(tmp_path, store, adapters):
    from adapters import registry

    raw = {"store": {"path": str(tmp_path / "unused.db")}, "topics": {}, "sync": {},
           "adapters": [{"type": "memory", "interval": 1, **a} for a in adapters]}
    settings = validate_settings(raw, tmp_path / "settings.toml")
    built = {a.name: registry.build(a, settings.topics) for a in settings.adapters}
    return Engine(settings, store, built), built


def test_a_reconcile_stages_what_the_store_lacks_and_reapplies_what_the_sinks_lack(any_store, tmp_path):
    store = any_store
    engine, v = _engine(tmp_path, store, [{"name": "src", "role": "read", "page_size": 2},
                                          {"name": "both", "page_size": 3, "batch_size": 2},
                                          {"name": "sink", "role": "write", "page_size": 2, "batch_size": 2}])
    for address in ("d@x.io", "b@x.io", "a@x.io", "c@x.io"):
        v["src"].opt_out(OptOut(address, "*", "unsubscribed", "recipient", JAN))
    engine.sync_once()
    assert set(v["sink"].held) == set(v["both"].held) == {(a, "*") for a in ("a@x.io", "b@x.io", "c@x.io", "d@x.io")}
    # Drift: the source holds opt-outs its change feed never showed (one stronger than stored);
    # the sinks lost some by hand; "both" holds one of its own the store lacks.
    v["src"].held[("z@x.io", "*")] = OptOut("z@x.io", "*", "unsubscribed", "recipient", FEB)
    v["src"].held[("e@x.io", "*")] = OptOut("e@x.io", "*", "unsubscribed", "recipient", FEB)
    v["src"].held[("b@x.io", "*")] = OptOut("b@x.io", "*", "spam_complaint", "recipient", FEB)
    for address in ("a@x.io", "c@x.io"):
        del v["sink"].held[(address, "*")]
    del v["both"].held[("d@x.io", "*")]
    v["both"].held[("y@x.io", "*")] = OptOut("y@x.io", "*", "hard_bounce", "system", FEB)

    report = engine.reconcile("src")
    assert report.error is None and (report.pulled, report.added, report.changed) == (6, 2, 1)
    assert [e["address"] for e in store.events_after(0, 100) if e["kind"] == "suppressed"][-2:] == [
        "e@x.io", "z@x.io"]     # staged in (address, scope) order
    assert store.suppression("b@x.io")["reason"] == "spam_complaint"
    assert store.events_for("b@x.io")[-1]["kind"] == "changed"

    engine.sync_once()                       # e and z go out to the sinks
    v["sink"].apply_calls.clear()
    report = engine.reconcile("sink")        # a write-only sink: the merge diff
    assert report.error is None and report.missing_at_source == 2
    assert [[o.address for o in call] for call in v["sink"].apply_calls] == [["a@x.io", "c@x.io"]]
    assert [e["target"] for e in store.events_for("c@x.io") if e["kind"] == "applied"].count("sink") == 2

    report = engine.reconcile("both")        # reads and writes: the source set
    assert report.error is None and (report.added, report.missing_at_source) == (1, 1)
    assert store.suppression("y@x.io")["source"] == "both"
    assert ("d@x.io", "*") in v["both"].held and v["both"].effects[("d@x.io", "*")] == 2
    assert store.checkpoint("both").last_reconcile_at is not None

    # A release at "both" is not re-applied there by its reconcile.
    v["both"].resubscribe("a@x.io", occurred_at=MAR)
    assert engine.cycle("both").released == 1
    report = engine.reconcile("both")
    assert report.error is None and report.missing_at_source == 0
    assert ("a@x.io", "*") not in v["both"].held and resubscribes.release_counts(store) == {"both": 1}


def test_a_dry_reconcile_finds_the_same_and_keeps_nothing(any_store, tmp_path):
    store = any_store
    engine, v = _engine(tmp_path, store, [{"name": "src", "role": "read"}, {"name": "sink", "role": "write"}])
    v["src"].opt_out(OptOut("a@x.io"))
    engine.sync_once()
    v["sink"].held.clear()
    v["src"].held[("n@x.io", "*")] = OptOut("n@x.io")
    before = store.last_event_seq()
    assert engine.reconcile("src", dry_run=True).added == 1
    assert engine.reconcile("sink", dry_run=True).missing_at_source == 1
    assert store.last_event_seq() == before and store.suppression("n@x.io") is None and v["sink"].held == {}
    assert engine.reconcile("sink").missing_at_source == 1 and set(v["sink"].held) == {("a@x.io", "*")}


def test_the_merge_diff_and_the_source_set_find_the_same_missing_rows(any_store):
    from state.merge_diff import SinkMerge

    store = any_store
    _suppress(store, "src", *[OptOut(f"{n}@x.io", scope) for n in "abcdef" for scope in ("*", "news", "deals")])
    read = [OptOut("b@x.io", "news"), OptOut("a@x.io"), OptOut("c@x.io", "deals"), OptOut("c@x.io"),
            OptOut("e@x.io", "*"), OptOut("b@x.io")]    # partly out of order
    found = {}
    for merged in (False, True):
        if merged:
            merge = SinkMerge(store, {"news"}, True)
            merge.feed(read[:3])
            merge.feed(read[3:])
            merge.finish()
            assert (merge.in_order, merge.out_of_order) == (3, 3)
        else:
            store.begin_source_set()
            store.add_to_source_set(read[:3])
            store.add_to_source_set(read[3:])
        found[merged] = [(o.address, o.scope) for rows in store.missing_at_source({"news"}, True, 4, merged=merged)
                         for _seq, o in rows]
    assert found[True] == found[False]
    # "deals" is expected as all-email: where the read holds the address's "*", its deals is held too.
    assert found[True] == [("a@x.io", "news"), ("c@x.io", "news"), ("d@x.io", "*"), ("d@x.io", "deals"),
                           ("d@x.io", "news"), ("e@x.io", "news"), ("f@x.io", "*"), ("f@x.io", "deals"),
                           ("f@x.io", "news")]
    keys = [key for page in store.suppression_keys(4) for key in page]
    assert [(a, s) for _seq, a, s in keys] == sorted((f"{n}@x.io", s) for n in "abcdef" for s in ("*", "news", "deals"))


# -- snapshots ---------------------------------------------------------------------------------------

def test_snapshots_find_their_candidates_keep_their_members_and_record_deletions(any_store):
    store = any_store
    _suppress(store, "crm", OptOut("b1@x.io", "*", "unsubscribed", "recipient", JAN),
              OptOut("b2@x.io", "*", "hard_bounce", "system", JAN, {"bounce_category": "bad-mailbox"}),
              OptOut("b3@x.io", "*", "hard_bounce", "system", FEB, {"bounce_category": "bad-domain"}),
              OptOut("b4@x.io", "news", "hard_bounce", "system", FEB),
              OptOut("b2@x.io", "news", "hard_bounce", "system", FEB, {"bounce_category": "full"}))
    # b1 becomes a hard bounce later (a 'changed' event): its latest matching event gives its category.
    store.ingest_page("crm", Page([OptOut("b1@x.io", "*", "hard_bounce", "system", MAR,
                                          {"bounce_category": "inactive"})]))
    found = snapshots.candidates(store, "hard_bounce")
    assert [(c.address, c.occurred_at, c.bounce_category) for c in found] == [
        ("b1@x.io", MAR, "inactive"), ("b2@x.io", FEB, "full"), ("b3@x.io", FEB, "bad-domain")]
    assert [c.address for c in snapshots.candidates(store, "hard_bounce", categories=["bad-domain", "inactive"])] == [
        "b1@x.io", "b3@x.io"]
    assert [c.address for c in snapshots.candidates(store, "hard_bounce", since=FEB, after="b1@x.io")] == [
        "b2@x.io", "b3@x.io"]
    assert [c.address for c in snapshots.candidates(store, "hard_bounce", until=FEB)] == ["b2@x.io"]
    assert [c.address for c in snapshots.candidates(store, "hard_bounce", limit=1)] == ["b1@x.io"]

    snapshots.create(store, "s1", "crm", "hard_bounce", since=None, until=None, categories=["bad-mailbox"])
    snapshots.add_members(store, "s1", [("c2", "b2@x.io", JAN, "bad-mailbox"), ("c1", "b1@x.io", MAR, "inactive")])
    snapshots.add_members(store, "s1", [("c2", "b2@x.io", JAN, "bad-mailbox")])    # again: kept once
    snapshots.finish(store, "s1", without_contact=1)
    snapshots.create(store, "s2", "crm", "hard_bounce", since=None, until=None, categories=None)
    snapshots.finish(store, "s2", without_contact=0)
    loaded = snapshots.load(store, "s1")
    assert {k: loaded[k] for k in ("name", "state", "categories", "count", "pending", "without_contact")} == {
        "name": "s1", "state": "ready", "categories": ["bad-mailbox"], "count": 2, "pending": 2, "without_contact": 1}
    assert "row_order" not in loaded
    assert snapshots.latest(store, "crm", "hard_bounce")["name"] == "s2"   # the newer one
    batches = list(snapshots.members(store, "s1", batch=1))
    assert [[m.contact_id for m in batch] for batch in batches] == [["c1"], ["c2"]]

    first, second = batches[0][0], batches[1][0]
    snapshots.record_deletions(store, "s1", "crm", "hard_bounce", [(first, True, ""), (second, False, "locked")])
    assert [m.contact_id for batch in snapshots.members(store, "s1", pending_only=True) for m in batch] == ["c2"]
    deleted = store.events_for("b1@x.io")[-1]
    assert (deleted["kind"], deleted["target"], deleted["details"]) == (
        "contact_deleted", "crm", '{"contact_id": "c1", "snapshot": "s1"}')
    assert store.events_for("b2@x.io")[-1]["kind"] == "contact_delete_failed"
    snapshots.record_deletions(store, "s1", "crm", "hard_bounce", [(second, True, "")])
    assert snapshots.load(store, "s1")["state"] == "deleted"
    assert snapshots.latest(store, "crm", "hard_bounce")["name"] == "s2"


# -- the status page's and the metrics' numbers, the same on both backends ---------------------------

def _history(store):
    """One history of opt-outs, pushes (one already held), a failure and a re-subscribe."""
    recent = to_utc_iso(datetime.now(timezone.utc) - timedelta(hours=2))
    store.ingest_page("src", Page([OptOut("a@x.io", "*", "unsubscribed", "recipient", recent),
                                   OptOut("b@x.io", "*", "spam_complaint", "recipient", None),
                                   OptOut("c@x.io", "news", "hard_bounce", "system", recent)],
                                  [Rejected("list.csv row 2", "nope", "no @")]))
    store.promote("src")
    store.ingest_page("other", Page([OptOut("d@x.io")]))
    store.promote("other")
    metrics = Metrics(["esp", "crm"])
    metrics.observe_applies(store)      # notes where the log ends
    _push(store, "esp")
    pending, highest = store.pending_events("crm", 0, 100)
    store.record_push("crm", [PushOutcome(p.seq, p.optout, ApplyResult(p.optout, ALREADY if n == 0 else APPLIED))
                              for n, p in enumerate(pending)], highest)
    store.ingest_page("esp", Page([], resubscribes=[Resubscribe("a@x.io", "*", "recipient", to_utc_iso(
        datetime.now(timezone.utc)), {})]))
    return metrics


def _numbers(store, metrics):
    daily = dashboard.DailyOptOutCounter().refresh(store.conn)
    failures, open_count = dashboard.open_failures(store.conn, ["src", "esp", "crm"])
    observed = metrics.observe_applies(store)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in metrics.registry.collect() if family.name.endswith("apply_latency_seconds")
               for s in family.samples if not s.name.endswith("_sum") and not s.name.endswith("_created")}
    return {"daily": (daily.days, daily.by_reason, daily.by_source, daily.total),
            "failures": ([(f["adapter"], f["kind"], f["location"], f["value"], f["message"]) for f in failures],
                         open_count),
            "last": [(e["kind"], e["address"], e["scope"], e["reason"], e["source"], e["target"], e["message"])
                     for e in dashboard.last_events(store.conn, 8)],
            "latency": (observed, samples),
            "released": resubscribes.release_counts(store),
            "count": list(store.iter_suppressions(count=True))}


def _check_latencies(store):
    """apply_latencies' seconds are the times in the events, subtracted (to the millisecond)."""
    rows = dashboard.apply_latencies(store, 0, store.last_event_seq(), 100)
    by_seq = {e["seq"]: e for e in store.events_after(0, 100)}
    assert [target for _seq, target, _s in rows] == ["esp", "esp", "esp", "esp", "crm", "crm", "crm"]
    for seq, _target, seconds in rows:
        applied = by_seq[seq]
        source = by_seq[applied["ref_seq"]]
        expected = (datetime.fromisoformat(applied["recorded_at"])
                    - datetime.fromisoformat(source["occurred_at"] or source["recorded_at"])).total_seconds()
        assert isinstance(seconds, float) and seconds == pytest.approx(expected, abs=0.01)


@pytest.mark.postgresql
def test_the_status_pages_and_the_metrics_numbers_are_the_same_on_both_backends(pg_url, tmp_path):
    from state.pg_store import PgStore
    from state.store import Store

    numbers = {}
    with Store(tmp_path / "store.db") as sqlite_store, PgStore(pg_url) as pg_store:
        for name, store in (("sqlite", sqlite_store), ("postgresql", pg_store)):
            numbers[name] = _numbers(store, _history(store))
            _check_latencies(store)
    on_sqlite, on_pg = numbers["sqlite"], numbers["postgresql"]
    assert on_sqlite["daily"][3] == 4 and on_sqlite["failures"][1] == 1 and on_sqlite["released"] == {"esp": 1}
    # Eight pushes were recorded; crm already held the first: seven latencies.
    assert on_sqlite["latency"][0] == 7
    assert on_sqlite["latency"][1][("optout_sync_apply_latency_seconds_count", (("adapter", "esp"),))] == 4
    # At esp: b and d are undated (their latency runs from when they were stored), a and c 2 h old.
    assert on_sqlite["latency"][1][("optout_sync_apply_latency_seconds_bucket",
                                     (("adapter", "esp"), ("le", "3600.0")))] == 2
    for part in on_sqlite:
        assert on_pg[part] == on_sqlite[part], part


# -- PostgreSQL: big reads stream ----------------------------------------------------------------

@pytest.mark.postgresql
def test_export_reads_stream_through_a_server_side_cursor_and_writes_may_come_between(pg_url, monkeypatch):
    import state.pg_store as pg_store_module

    monkeypatch.setattr(pg_store_module, "STREAM_ROWS", 3)
    with pg_store_module.PgStore(pg_url) as store:
        _suppress(store, "src", *[OptOut(f"r{n:02d}@x.io") for n in range(10)])
        rows = store.iter_suppressions()
        first = next(rows)
        # A held server-side cursor, not the whole result in the client.
        assert store.conn.execute("SELECT count(*) FROM pg_cursors WHERE is_holdable").fetchone()[0] == 1
        _suppress(store, "src", OptOut("zz@x.io"))      # a write between two rows
        rest = list(rows)
        assert [first[0], *[r[0] for r in rest]] == [f"r{n:02d}@x.io" for n in range(10)]
        assert store.conn.execute("SELECT count(*) FROM pg_cursors").fetchone()[0] == 0   # closed at its end
        assert list(store.iter_suppressions(count=True)) == [(11,)]
