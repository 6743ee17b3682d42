"""Engine rules: spreading, echo suppression, topics, guard, dry run, failures and the watermark."""

from __future__ import annotations

import json

import pytest

from state.errors import RefusedError
from state.models import OptOut

LATER = "2099-01-01T00:00:00+00:00"


def held(vendor) -> set[tuple[str, str]]:
    return set(vendor.held)


def sent_to(vendor) -> list[tuple[str, str]]:
    return [(o.address, o.scope) for call in vendor.apply_calls for o in call]


def test_an_opt_out_spreads_to_every_writable_adapter_but_not_back_to_its_source(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}, {"name": "c", "role": "read"}])
    v["a"].opt_out(OptOut("x@example.com", reason="unsubscribed", origin="recipient"))

    reports = engine.sync_once()

    assert all(r.error is None for r in reports)
    assert held(v["b"]) == {("x@example.com", "*")}
    assert sent_to(v["a"]) == []          # no echo to the source
    assert sent_to(v["c"]) == []          # read-only adapters are never written
    row = store.suppression("x@example.com")
    assert (row["reason"], row["origin"], row["source"]) == ("unsubscribed", "recipient", "a")
    kinds = [(e["kind"], e["target"]) for e in store.events_for("x@example.com")]
    assert kinds == [("suppressed", None), ("applied", "b")]


def test_topics_map_per_adapter_and_unmapped_ones_are_skipped_and_listed(memory_world):
    settings, store, engine, v = memory_world(
        [{"name": "a"}, {"name": "b", "topics": {"news": "42"}}, {"name": "c"}],
        topics={"news": "Newsletter"})
    v["a"].opt_out(OptOut("x@example.com", scope="news"))

    engine.sync_once()

    assert held(v["b"]) == {("x@example.com", "news")}
    assert held(v["c"]) == set()
    unmapped = [f for f in store.failures("c")]
    assert [(f["kind"], f["address"], f["scope"]) for f in unmapped] == [("unmapped", "x@example.com", "news")]
    assert "not mapped" in unmapped[0]["message"]
    # The skip moved c's watermark on: the next cycle does not list it again.
    engine.sync_once()
    assert len(list(store.failures("c"))) == 1


def test_unmapped_topics_global_policy_suppresses_from_all_email(memory_world):
    settings, store, engine, v = memory_world(
        [{"name": "a", "topics": {"news": "n"}}, {"name": "c", "unmapped_topics": "global"}],
        topics={"news": "Newsletter"})
    v["a"].opt_out(OptOut("x@example.com", scope="news"))

    engine.sync_once()

    assert held(v["c"]) == {("x@example.com", "*")}
    assert list(store.failures("c")) == []


def test_mass_change_guard_pauses_until_the_exact_count_is_approved(memory_world):
    settings, store, engine, v = memory_world([{"name": "a", "max_new_per_cycle": 3}, {"name": "b"}])
    for i in range(5):
        v["a"].opt_out(OptOut(f"u{i}@example.com"))

    reports = {r.adapter: r for r in engine.sync_once()}

    assert reports["a"].paused and reports["a"].waiting_approval == 5
    assert store.count_suppressions() == 0
    assert held(v["b"]) == set()
    # A paused adapter is not read again, so the count to approve stays put.
    v["a"].opt_out(OptOut("late@example.com"))
    engine.sync_once()
    assert store.staged_count("a") == 5

    with pytest.raises(RefusedError, match="has 5 staged"):
        engine.approve("a", 4)
    assert store.count_suppressions() == 0 and store.checkpoint("a").paused

    assert engine.approve("a", 5) == 5
    assert not store.checkpoint("a").paused
    engine.sync_once()
    assert held(v["b"]) == {(f"u{i}@example.com", "*") for i in range(5)} | {("late@example.com", "*")}


def test_approve_refuses_an_adapter_that_is_not_paused(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}])
    with pytest.raises(RefusedError, match="not paused"):
        engine.approve("a", 0)


def test_dry_run_changes_nothing_anywhere(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}])
    v["a"].opt_out(OptOut("old@example.com"))
    engine.sync_once()
    v["a"].opt_out(OptOut("new@example.com"))
    before = store.conn.execute("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM suppressions),"
                                " (SELECT group_concat(read_cursor || ':' || applied_seq) FROM checkpoints),"
                                " (SELECT count(*) FROM runs)").fetchone()
    calls_before = len(v["b"].apply_calls)

    reports = {r.adapter: r for r in engine.sync_once(dry_run=True)}

    assert reports["a"].staged == 1 and reports["b"].pushed == 1   # what it would do
    after = store.conn.execute("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM suppressions),"
                               " (SELECT group_concat(read_cursor || ':' || applied_seq) FROM checkpoints),"
                               " (SELECT count(*) FROM runs)").fetchone()
    assert after == before
    assert len(v["b"].apply_calls) == calls_before


def test_batches_never_exceed_the_adapter_batch_size(memory_world):
    settings, store, engine, v = memory_world([{"name": "a", "page_size": 50},
                                               {"name": "b", "batch_size": 10}])
    for i in range(25):
        v["a"].opt_out(OptOut(f"u{i:02d}@example.com"))

    engine.sync_once()

    assert [len(call) for call in v["b"].apply_calls] == [10, 10, 5]
    assert len(v["b"].held) == 25


def test_watermark_never_passes_an_unapplied_event(memory_world):
    settings, store, engine, v = memory_world([{"name": "a", "page_size": 50},
                                               {"name": "b", "batch_size": 10}])
    for i in range(6):
        v["a"].opt_out(OptOut(f"u{i}@example.com"))
    v["b"].fail_transient_addresses = {"u2@example.com"}

    report = {r.adapter: r for r in engine.sync_once()}["b"]

    assert report.parked == 1 and report.pushed == 5
    stuck = store.conn.execute("SELECT seq FROM events WHERE kind='suppressed' AND address='u2@example.com'"
                               ).fetchone()[0]
    assert store.checkpoint("b").applied_seq == stuck - 1
    parked = list(store.failures("b"))
    assert [(f["kind"], f["address"]) for f in parked] == [("transient", "u2@example.com")]

    v["b"].fail_transient_addresses = set()
    engine.sync_once()

    assert held(v["b"]) == {(f"u{i}@example.com", "*") for i in range(6)}
    # Items applied before are not sent again: only the parked one was.
    assert sent_to(v["b"])[6:] == [("u2@example.com", "*")]
    assert list(store.failures("b")) == []          # resolved
    assert all(count == 1 for count in v["b"].effects.values())


def test_permanent_item_failure_is_listed_and_does_not_block_the_rest(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}])
    v["a"].opt_out(OptOut("bad@example.com"))
    v["a"].opt_out(OptOut("good@example.com"))
    v["b"].fail_permanent_addresses = {"bad@example.com"}

    report = {r.adapter: r for r in engine.sync_once()}["b"]

    assert (report.pushed, report.failed) == (1, 1)
    failures = list(store.failures("b"))
    assert [(f["kind"], f["address"], f["message"]) for f in failures] == [
        ("permanent", "bad@example.com", "vendor refuses this address")]
    assert store.checkpoint("b").applied_seq == store.conn.execute("SELECT max(seq) FROM events"
                                                                   " WHERE kind='suppressed'").fetchone()[0]
    history = [e["kind"] for e in store.events_for("bad@example.com")]
    assert history == ["suppressed", "failed"]


def test_bad_credentials_keep_every_item_pending(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}])
    v["a"].opt_out(OptOut("x@example.com"))
    v["b"].raise_permanent = True

    report = {r.adapter: r for r in engine.sync_once()}["b"]

    assert "invalid credentials" in str(report.error)
    assert store.checkpoint("b").applied_seq == 0
    assert list(store.failures("b")) == []
    assert store.last_run("b")["error_class"] == "PermanentError"

    v["b"].raise_permanent = False
    engine.sync_once()
    assert held(v["b"]) == {("x@example.com", "*")}


def test_a_whole_batch_that_is_unavailable_is_parked_and_retried(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}])
    v["a"].opt_out(OptOut("x@example.com"))
    v["a"].opt_out(OptOut("y@example.com"))
    v["b"].fail_transient_batches = 1

    report = {r.adapter: r for r in engine.sync_once()}["b"]

    assert report.parked == 2 and "503" in str(report.error)
    assert {f["address"] for f in store.failures("b")} == {"x@example.com", "y@example.com"}
    assert store.checkpoint("b").applied_seq == 0
    engine.sync_once()
    assert held(v["b"]) == {("x@example.com", "*"), ("y@example.com", "*")}
    assert list(store.failures("b")) == []


def test_crash_between_vendor_call_and_commit_reapplies_with_the_same_effect(memory_world, monkeypatch):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}])
    v["a"].opt_out(OptOut("x@example.com"))
    engine.sync_once(["a"])
    original = store.record_push

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash after the vendor call")

    monkeypatch.setattr(store, "record_push", crash)
    with pytest.raises(KeyboardInterrupt):
        engine.push("b", __import__("connector.engine", fromlist=["CycleReport"]).CycleReport("b"))
    monkeypatch.setattr(store, "record_push", original)
    assert store.checkpoint("b").applied_seq == 0

    engine.sync_once()

    assert len(v["b"].apply_calls) == 2               # sent again (at-least-once)
    assert v["b"].effects[("x@example.com", "*")] == 1  # but applied once (exactly-once effect)
    # The re-send's "already" is the interrupted send's doing: recorded as our apply (a lift reaches it).
    applied = [e for e in store.events_for("x@example.com") if e["kind"] == "applied"]
    assert [(e["message"], json.loads(e["details"])["outcome"]) for e in applied] == [
        ("applied by a send interrupted before its outcome was recorded", "applied")]


def test_a_stronger_reason_is_recorded_and_never_downgraded(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}])
    v["a"].opt_out(OptOut("x@example.com", reason="imported", origin="user"))
    engine.sync_once()
    # The recipient unsubscribes at b later on (dated after the daemon's apply: not an echo).
    v["b"].opt_out(OptOut("x@example.com", reason="unsubscribed", origin="recipient", occurred_at=LATER))
    engine.sync_once()
    row = store.suppression("x@example.com")
    assert (row["reason"], row["origin"]) == ("unsubscribed", "recipient")

    # A later user-made observation never turns it back into a liftable user opt-out.
    v["a"].opt_out(OptOut("x@example.com", reason="hard_bounce", origin="user"))
    v["a"].log.append(OptOut("x@example.com", reason="hard_bounce", origin="user"))
    engine.sync_once()
    row = store.suppression("x@example.com")
    assert (row["reason"], row["origin"]) == ("unsubscribed", "recipient")
    kinds = [e["kind"] for e in store.events_for("x@example.com")]
    assert kinds.count("suppressed") == 1 and kinds.count("changed") == 1


def test_reconcile_ingests_what_the_cursor_missed_and_reapplies_drift(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}])
    v["a"].opt_out(OptOut("x@example.com"))
    engine.sync_once()
    # Drift: someone removed x at b by hand; a held y without a change-log entry.
    del v["b"].held[("x@example.com", "*")]
    v["a"].held[("y@example.com", "*")] = OptOut("y@example.com")

    dry = engine.reconcile("b", dry_run=True)
    assert dry.missing_at_source == 1 and ("x@example.com", "*") not in v["b"].held

    report = engine.reconcile("b")
    assert report.error is None and report.missing_at_source == 1
    assert ("x@example.com", "*") in v["b"].held

    report = engine.reconcile("a")
    assert report.staged == 1 and store.suppression("y@example.com") is not None
    engine.sync_once()
    assert ("y@example.com", "*") in v["b"].held
    assert store.checkpoint("a").last_reconcile_at is not None


def test_reconcile_of_a_failing_source_changes_nothing(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}])
    v["a"].read_error = OSError("disk gone")
    report = engine.reconcile("a")
    assert isinstance(report.error, OSError)
    assert store.checkpoint("a").last_reconcile_at is None
    assert store.last_run("a")["error"] == "disk gone"


def test_rejected_input_is_listed_with_where_and_why(memory_world):
    from state.models import Page, Rejected

    settings, store, engine, v = memory_world([{"name": "a"}])
    store.ingest_page("a", Page([], [Rejected("list.csv row 3", "nope", "no @ in address")], cursor="1"))
    failure = next(store.failures("a"))
    assert (failure["kind"], failure["location"], failure["message"]) == ("rejected", "list.csv row 3",
                                                                          "no @ in address")


def test_a_sink_reporting_back_what_it_was_sent_changes_nothing(memory_world):
    """Some vendors report every unsubscribe as the recipient's: an echo must not upgrade a user's opt-out."""
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}])
    v["a"].opt_out(OptOut("x@example.com", reason="imported", origin="user"))
    engine.sync_once()
    # b echoes it in its own words, undated or dated before our apply.
    v["b"].log.append(OptOut("x@example.com", reason="unsubscribed", origin="recipient"))
    v["b"].log.append(OptOut("x@example.com", reason="unsubscribed", origin="recipient",
                             occurred_at="2000-01-01T00:00:00+00:00"))
    engine.sync_once()
    assert engine.reconcile("b").error is None
    row = store.suppression("x@example.com")
    assert (row["reason"], row["origin"]) == ("imported", "user")
    assert [e["kind"] for e in store.events_for("x@example.com")] == ["suppressed", "applied"]


def test_an_unmapped_topic_sent_as_all_email_does_not_come_back_as_a_global_opt_out(memory_world):
    settings, store, engine, v = memory_world(
        [{"name": "a", "topics": {"news": "n"}}, {"name": "b", "unmapped_topics": "global"}, {"name": "c"}],
        topics={"news": "Newsletter"})
    v["a"].opt_out(OptOut("x@example.com", scope="news"))
    engine.sync_once()
    assert held(v["b"]) == {("x@example.com", "*")}
    v["b"].log.append(OptOut("x@example.com", "*", "unsubscribed", "recipient"))   # b reports what it holds
    engine.sync_once()
    assert engine.reconcile("b").error is None
    engine.sync_once()
    assert store.suppression("x@example.com", "*") is None
    assert held(v["c"]) == set()                # c maps no topic: nothing reached it
    # A global opt-out the recipient makes at b later is real, and spreads.
    v["b"].log.append(OptOut("x@example.com", "*", "unsubscribed", "recipient", LATER))
    engine.sync_once()
    assert store.suppression("x@example.com", "*")["source"] == "b"
    assert held(v["c"]) == {("x@example.com", "*")}


def test_a_stronger_observation_later_in_the_same_cycle_wins_in_staging(memory_world):
    settings, store, engine, v = memory_world([{"name": "a", "page_size": 1}])
    v["a"].log.append(OptOut("x@example.com", reason="unsubscribed", origin="recipient"))
    v["a"].log.append(OptOut("x@example.com", reason="spam_complaint", origin="system"))
    v["a"].log.append(OptOut("x@example.com", reason="imported", origin="user"))
    report = engine.sync_once()[0]
    row = store.suppression("x@example.com")
    assert (row["reason"], row["origin"]) == ("spam_complaint", "system")
    assert report.added == 1 and report.staged == 1
