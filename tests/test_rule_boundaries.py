"""The rules that must never break, each at its boundary and on the path a mutation run found untested.

Every test here was seen to fail on a deliberately broken copy of the code it guards
(docs/testing.md lists the mutation behind each).
"""

from __future__ import annotations

import itertools
import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Literal

import pytest
from pydantic import SecretStr

from adapters import registry
from state.errors import InputError, RefusedError
from state.lifts import lift
from state.models import REASONS, OptOut, PERMANENT, ApplyResult
from state.store import ECHO_SKEW_SECONDS

from .memory_adapter import MemoryAdapter, MemorySettings

REASON_ORDER = ["imported", "manual", "unsubscribed", "hard_bounce", "spam_complaint"]


def test_the_reason_order_is_the_documented_one():
    assert sorted(REASONS) == sorted(REASON_ORDER)


# -- the watermark across several batches ---------------------------------------------------

def test_the_watermark_stays_below_a_parked_event_while_later_batches_succeed(memory_world):
    """A push stops for the cycle at a parked item; the following cycles skip what is applied, send the
    parked item again with later events in the same batches, and the watermark waits for it throughout."""
    settings, store, engine, v = memory_world([{"name": "a", "page_size": 50},
                                               {"name": "b", "batch_size": 3}])
    for i in range(9):
        v["a"].opt_out(OptOut(f"u{i}@example.com"))
    v["b"].fail_transient_addresses = {"u1@example.com"}   # parked inside the first batch of three
    stuck = None

    for cycle in range(4):
        engine.sync_once()
        if stuck is None:
            stuck = store.conn.execute("SELECT seq FROM events WHERE kind = 'suppressed' AND address = ?",
                                       ("u1@example.com",)).fetchone()[0]
        assert store.checkpoint("b").applied_seq == stuck - 1, f"cycle {cycle}"
        assert [f["address"] for f in store.failures("b")] == ["u1@example.com"]

    # Every batch after the first carried u1 again beside events that were applied.
    assert [len(call) for call in v["b"].apply_calls] == [3, 3, 3, 3]
    assert all("u1@example.com" in _sent_to_call(call) for call in v["b"].apply_calls)
    assert set(v["b"].held) == {(f"u{i}@example.com", "*") for i in range(9) if i != 1}
    assert all(count == 1 for count in v["b"].effects.values())

    v["b"].fail_transient_addresses = set()
    engine.sync_once()

    assert _sent_to_call(v["b"].apply_calls[-1]) == ["u1@example.com"]
    assert ("u1@example.com", "*") in v["b"].held
    last = store.conn.execute("SELECT max(seq) FROM events WHERE kind = 'suppressed'").fetchone()[0]
    assert store.checkpoint("b").applied_seq >= last
    assert list(store.failures("b")) == []


def _sent_to_call(call) -> list[str]:
    return [o.address for o in call]


# -- dated echoes ---------------------------------------------------------------------------

def _applied_at(store, address: str, target: str) -> datetime:
    text = store.conn.execute("SELECT recorded_at FROM events WHERE kind = 'applied' AND address = ?"
                              " AND target = ?", (address, target)).fetchone()[0]
    return datetime.fromisoformat(text)


@pytest.mark.parametrize("offset_s", [-3600, 0, ECHO_SKEW_SECONDS - 1])
def test_a_dated_echo_within_the_clock_skew_allowance_changes_nothing(memory_world, offset_s):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}])
    v["a"].opt_out(OptOut("x@example.com", reason="imported", origin="user"))
    engine.sync_once()
    when = _applied_at(store, "x@example.com", "b") + timedelta(seconds=offset_s)
    # b reports back what it was sent, dated just after our apply (its clock runs a little ahead).
    v["b"].log.append(OptOut("x@example.com", reason="imported", origin="recipient",
                             occurred_at=when.isoformat()))

    engine.sync_once()
    assert engine.reconcile("b").error is None

    row = store.suppression("x@example.com")
    assert (row["reason"], row["origin"], row["source"]) == ("imported", "user", "a")
    assert [e["kind"] for e in store.events_for("x@example.com")] == ["suppressed", "applied"]


def test_an_observation_dated_past_the_skew_allowance_is_news(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}])
    v["a"].opt_out(OptOut("x@example.com", reason="imported", origin="user"))
    engine.sync_once()
    when = _applied_at(store, "x@example.com", "b") + timedelta(seconds=ECHO_SKEW_SECONDS + 60)
    v["b"].log.append(OptOut("x@example.com", reason="unsubscribed", origin="recipient",
                             occurred_at=when.isoformat()))

    engine.sync_once()

    row = store.suppression("x@example.com")
    assert (row["reason"], row["origin"]) == ("unsubscribed", "recipient")


# -- the whole order of reasons -------------------------------------------------------------

@pytest.mark.parametrize("first,second", list(itertools.permutations(REASON_ORDER, 2)))
def test_only_a_more_binding_reason_replaces_a_stored_one(memory_world, first, second):
    settings, store, engine, v = memory_world([{"name": "a"}])
    v["a"].log.append(OptOut("x@example.com", reason=first, origin="system"))
    engine.sync_once()
    v["a"].log.append(OptOut("x@example.com", reason=second, origin="system",
                             occurred_at="2099-01-01T00:00:00+00:00"))
    engine.sync_once()

    stronger = max(first, second, key=REASON_ORDER.index)
    assert store.suppression("x@example.com")["reason"] == stronger
    changes = [e for e in store.events_for("x@example.com") if e["kind"] == "changed"]
    assert len(changes) == (1 if stronger == second else 0)


# -- the mass-change guard at its boundary, on pull and on reconcile ---------------------------

@pytest.mark.parametrize("count,paused", [(3, False), (4, True)])
def test_exactly_max_new_per_cycle_passes_and_one_more_pauses(memory_world, count, paused):
    settings, store, engine, v = memory_world([{"name": "a", "max_new_per_cycle": 3}, {"name": "b"}])
    for i in range(count):
        v["a"].opt_out(OptOut(f"u{i}@example.com"))

    report = {r.adapter: r for r in engine.sync_once()}["a"]

    assert report.paused is paused and store.checkpoint("a").paused is paused
    assert store.count_suppressions() == (0 if paused else count)
    assert len(v["b"].held) == (0 if paused else count)


@pytest.mark.parametrize("count,paused", [(3, False), (4, True)])
def test_a_reconcile_that_stages_more_than_the_limit_pauses_like_a_pull(memory_world, count, paused):
    settings, store, engine, v = memory_world([{"name": "a", "max_new_per_cycle": 3}, {"name": "b"}])
    for i in range(count):   # held at a without a change-log entry: only a full read finds them
        v["a"].held[(f"u{i}@example.com", "*")] = OptOut(f"u{i}@example.com")

    report = engine.reconcile("a")

    assert report.error is None
    assert report.paused is paused and store.checkpoint("a").paused is paused
    assert store.count_suppressions() == (0 if paused else count)
    if paused:
        assert report.waiting_approval == count and store.staged_count("a") == count
        engine.sync_once()
        assert v["b"].held == {}


@pytest.mark.parametrize("offered", [0, 4, 6, 50])
def test_approve_refuses_every_count_but_the_staged_one(memory_world, offered):
    settings, store, engine, v = memory_world([{"name": "a", "max_new_per_cycle": 3}, {"name": "b"}])
    for i in range(5):
        v["a"].opt_out(OptOut(f"u{i}@example.com"))
    engine.sync_once()
    assert store.staged_count("a") == 5

    with pytest.raises(RefusedError, match="has 5 staged"):
        engine.approve("a", offered)

    assert store.count_suppressions() == 0 and store.checkpoint("a").paused
    assert engine.approve("a", 5) == 5 and store.count_suppressions() == 5


# -- lift needs a legal basis in the library itself ----------------------------------------

@pytest.mark.parametrize("basis", [None, "", "  ", "Consent", "whim"])
def test_the_library_lift_refuses_a_missing_empty_or_unknown_legal_basis(memory_world, basis):
    settings, store, engine, v = memory_world([{"name": "a"}])
    v["a"].opt_out(OptOut("x@example.com", reason="manual", origin="user"))
    engine.sync_once()

    with pytest.raises(InputError, match="legal basis"):
        lift(store, "x@example.com", "*", basis, "asked us to", by="test")

    assert store.suppression("x@example.com") is not None
    assert [e["kind"] for e in store.events_for("x@example.com")] == ["suppressed"]


# -- a secret echoed by a non-HTTP adapter --------------------------------------------------

SECRET = "sk-live-4f9c1e2d7a"


class SecretSettings(MemorySettings):
    type: Literal["memory_secret"] = "memory_secret"
    token: SecretStr


class EchoingAdapter(MemoryAdapter):
    """A sink that refuses every item with a message quoting its own credential."""

    settings_model = SecretSettings

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        self.apply_calls.append(list(batch))
        return [ApplyResult(o, PERMANENT, f"refused for key {SECRET}: bad address") for o in batch]


registry.register("memory_secret", EchoingAdapter)


def test_the_engine_blanks_a_secret_echoed_in_a_per_item_message(memory_world, caplog, tmp_path):
    settings, store, engine, v = memory_world([{"name": "a"},
                                               {"name": "b", "type": "memory_secret", "token": SECRET}])
    v["a"].opt_out(OptOut("x@example.com"))

    with caplog.at_level(logging.DEBUG):
        engine.sync_once()

    failure = next(store.failures("b"))
    assert failure["message"] == "refused for key ***: bad address"
    event = [e for e in store.events_for("x@example.com") if e["kind"] == "failed"][0]
    assert SECRET not in (event["message"] or "") and "***" in event["message"]
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert SECRET.encode() not in settings.store.path.read_bytes()
    assert SECRET not in caplog.text


# -- a dismissed failure that happens again is open again, as a new failure ---------------------

def test_a_dismissed_failure_that_recurs_is_open_again_without_the_old_dismissal(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}])
    v["a"].opt_out(OptOut("bad@example.com"))
    v["b"].fail_permanent_addresses = {"bad@example.com"}
    engine.sync_once()
    failure = next(store.failures("b"))
    store.dismiss_failures([failure["id"]], "vendor refuses it; checked by hand", by="test")
    assert list(store.failures("b")) == [] and store.failure_count("b") == 0

    assert engine.reconcile("b").error is None        # re-applies what b lacks; b refuses it again

    again = list(store.failures("b"))
    assert [(f["id"], f["address"], f["dismissed_reason"]) for f in again] == [
        (failure["id"], "bad@example.com", None)]
    assert store.failure_count("b") == 1


# -- a lift removes exactly the (address, scope) it names ------------------------------------

def test_a_lift_of_a_topic_removes_that_topic_only_and_records_who(memory_world):
    settings, store, engine, v = memory_world([{"name": "a", "topics": {"news": "n"}}], topics={"news": "News"})
    v["a"].opt_out(OptOut("x@example.com", "news", "manual", "user"))
    v["a"].opt_out(OptOut("x@example.com", "*", "manual", "user"))
    engine.sync_once()

    lift(store, "x@example.com", "news", "consent", "asked for the newsletter again", by="ops-anna")

    assert store.suppression("x@example.com", "news") is None
    assert store.suppression("x@example.com", "*") is not None
    lifted = [e for e in store.events_for("x@example.com") if e["kind"] == "lifted"]
    assert [(e["scope"], e["legal_basis"], e["message"]) for e in lifted] == [
        ("news", "consent", "lifted by ops-anna")]
    assert json.loads(lifted[0]["details"]) == {"by": "ops-anna"}
    with pytest.raises(InputError, match="has no opt-out for scope 'news'"):
        lift(store, "x@example.com", "news", "consent", "again", by="ops-anna")


# -- what reconcile re-applies: the stored opt-out as it is, mapped like a push ------------------

def test_reconcile_reapplies_the_stored_reason_origin_date_and_details_and_maps_topics_like_push(memory_world):
    settings, store, engine, v = memory_world(
        [{"name": "a", "topics": {"news": "n"}}, {"name": "b"}, {"name": "c", "unmapped_topics": "global"}],
        topics={"news": "News"})
    when = "2026-03-04T05:06:07+00:00"
    v["a"].opt_out(OptOut("x@example.com", "*", "hard_bounce", "system", when, {"bounce_category": "bad_mailbox"}))
    v["a"].opt_out(OptOut("y@example.com", "news", "manual", "user"))
    engine.sync_once()
    for sink in ("b", "c"):       # drift: the sinks lost everything, and nothing is pending any more
        v[sink].held.clear()
        v[sink].apply_calls.clear()

    assert engine.reconcile("b").error is None
    assert engine.reconcile("c").error is None

    sent_b = {(o.address, o.scope): o for call in v["b"].apply_calls for o in call}
    assert set(sent_b) == {("x@example.com", "*")}          # b maps no topic and skips unmapped ones
    x = sent_b[("x@example.com", "*")]
    assert (x.reason, x.origin, x.occurred_at) == ("hard_bounce", "system", "2026-03-04T05:06:07.000000+00:00")
    assert (x.details or {}).get("bounce_category") == "bad_mailbox"
    sent_c = {(o.address, o.scope): o for call in v["c"].apply_calls for o in call}
    assert set(sent_c) == {("x@example.com", "*"), ("y@example.com", "*")}   # global: the topic as all email
    y = sent_c[("y@example.com", "*")]
    assert (y.reason, y.origin) == ("manual", "user") and (y.details or {}).get("topic") == "news"


# -- a dry run's lists stay bounded; its counts are whole ---------------------------------------

@pytest.mark.parametrize("limit, listed", [(20, 20), (None, 45)])
def test_a_dry_run_lists_at_most_its_limit_and_counts_everything(memory_world, limit, listed):
    settings, store, engine, v = memory_world([{"name": "a", "page_size": 50}, {"name": "b", "batch_size": 7}])
    for i in range(45):
        v["a"].opt_out(OptOut(f"u{i:02d}@example.com"))
    engine.dry_run_list_limit = limit

    reports = {r.adapter: r for r in engine.sync_once(dry_run=True)}

    assert reports["a"].staged == 45 and reports["b"].pushed == 45
    assert [o.address for o in reports["a"].would_add] == [f"u{i:02d}@example.com" for i in range(listed)]
    assert [o.address for o in reports["b"].would_push] == [f"u{i:02d}@example.com" for i in range(listed)]
    assert store.count_suppressions() == 0 and v["b"].held == {}
