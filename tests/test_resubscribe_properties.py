"""Property test of re-subscribes: over random interleavings of opt-outs, imports, lifts, echoes and
vendor changes back to subscribed (by random people, with random dates or none), only dated evidence
from the recipient, dated after the opt-out, ever releases or lifts an opt-out, a spam complaint or a
hard bounce never, and no vendor is ever asked to subscribe anyone."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from adapters import registry
from connector.engine import Engine
from connector.settings import validate_settings
from state.errors import InputError, RefusedError
from state.imports import run_import
from state.lifts import lift
from state.models import RESUBSCRIBERS, OptOut
from state.store import Store, canonical_time

from . import memory_adapter

ADAPTERS = [{"name": "crm", "topics": {"news": "n1"}}, {"name": "esp"}, {"name": "list", "role": "write"}]
READERS = ["crm", "esp"]
ADDRESSES = [f"user{n}@example.com" for n in range(2)]
SCOPES = ["*", "news"]
REASONS = [("unsubscribed", "recipient"), ("unsubscribed", "recipient"), ("manual", "user"),
           ("hard_bounce", "system"), ("spam_complaint", "system"), ("spam_complaint", "recipient")]
# Dates on both sides of the test's own clock (its records are dated now), and none.
DATES = [None, "2020-01-01T00:00:00+00:00", "2024-06-01T00:00:00+00:00", "2030-01-01T00:00:00+00:00",
         "2031-01-01T00:00:00+00:00", "2032-01-01T00:00:00+00:00"]
OPT_OUT_DATES = DATES[:4]  # mostly before the later re-subscribes, so that some of them count
# The recipient more often than the others, so that releases and lifts happen in most runs.
BY = ["recipient", "recipient", "recipient", *RESUBSCRIBERS[1:]]

step = st.one_of(
    st.tuples(st.just("optout"), st.sampled_from(READERS), st.sampled_from(ADDRESSES), st.sampled_from(SCOPES),
              st.sampled_from(REASONS), st.sampled_from(OPT_OUT_DATES)),
    st.tuples(st.just("resubscribe"), st.sampled_from(READERS), st.sampled_from(ADDRESSES),
              st.sampled_from(SCOPES), st.sampled_from(BY), st.sampled_from(DATES)),
    st.tuples(st.just("resubscribe"), st.sampled_from(READERS), st.sampled_from(ADDRESSES),
              st.sampled_from(SCOPES), st.sampled_from(BY), st.sampled_from(DATES)),
    st.tuples(st.just("import"), st.sampled_from(ADDRESSES), st.sampled_from(SCOPES)),
    st.tuples(st.just("lift"), st.sampled_from(ADDRESSES), st.sampled_from(SCOPES)),
    # A vendor reporting back what it holds (our write, read again), undated or dated now-ish.
    st.tuples(st.just("echo"), st.sampled_from(READERS), st.sampled_from([None, "2024-06-01T00:00:00+00:00"])),
    st.tuples(st.just("cycle"), st.sampled_from(["crm", "esp", "list", None])),
    st.tuples(st.just("cycle"), st.sampled_from(["crm", "esp", "list", None])),
    st.tuples(st.just("reconcile"), st.sampled_from(["crm", "esp", "list"])),
)


# Every (address, scope) starts opted out somewhere, so that re-subscribes have something to act on.
prologue = st.lists(st.tuples(st.just("optout"), st.sampled_from(READERS), st.sampled_from(ADDRESSES),
                              st.sampled_from(SCOPES), st.sampled_from(REASONS), st.sampled_from(OPT_OUT_DATES)),
                    min_size=2, max_size=4).map(lambda items: [*items, ("cycle", None)])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=prologue, steps=st.lists(step, min_size=8, max_size=40), policy=st.sampled_from(["local", "everywhere", "ignore"]))
def test_only_dated_recipient_evidence_releases_or_lifts_and_nothing_subscribes(start, steps, policy):
    steps = start + steps
    memory_adapter.VENDORS.clear()
    with tempfile.TemporaryDirectory() as folder:
        raw = {"store": {"path": str(Path(folder) / "store.db")}, "topics": {"news": "N"},
               "sync": {"recipient_resubscribe": policy},
               "adapters": [{"type": "memory", **a} for a in ADAPTERS]}
        config = validate_settings(raw, Path(folder) / "settings.toml")
        store = Store(config.store.path)
        vendors = {a.name: registry.build(a, config.topics) for a in config.adapters}
        engine = Engine(config, store, vendors)
        made = []  # every re-subscribe the vendors saw: (adapter, address, scope, by, canonical date)
        user_lifts = 0
        for action in steps:
            kind = action[0]
            if kind == "optout":
                _, name, address, scope, (reason, origin), when = action
                vendors[name].opt_out(OptOut(address, scope, reason, origin, when))
            elif kind == "resubscribe":
                _, name, address, scope, by, when = action
                vendors[name].resubscribe(address, scope, by, when, record_id=f"r{len(made)}")
                made.append((name, address, scope, by, canonical_time(when)))
            elif kind == "import":
                preview = run_import(store, [action[1]], scope=action[2], reason="imported", confirm=None,
                                     source="import")
                run_import(store, [action[1]], scope=action[2], reason="imported", confirm=preview.new,
                           source="import")
            elif kind == "lift":
                try:
                    lift(store, action[1], action[2], "consent", "asked by phone", "ops")
                    user_lifts += 1
                except (InputError, RefusedError):
                    pass
            elif kind == "echo":
                vendor = vendors[action[1]]
                for (address, scope), held in list(vendor.held.items()):
                    vendor.log.append(OptOut(address, scope, held.reason, held.origin, action[2]))
            elif kind == "cycle":
                reports = engine.sync_once([action[1]] if action[1] else None)
                assert [r.error for r in reports] == [None] * len(reports)
            else:
                assert engine.reconcile(action[1]).error is None
        for _ in range(2):
            assert [r.error for r in engine.sync_once()] == [None] * 3

        events = store.events_after(0, 1_000_000)
        by_seq = {e["seq"]: e for e in events}
        honoured = [e for e in events if e["kind"] == "resubscribed"]
        for e in honoured:
            # Only the recipient, dated, and seen at that vendor exactly so.
            assert e["origin"] == "recipient" and e["occurred_at"] is not None
            assert (e["source"], e["address"], e["scope"], "recipient", e["occurred_at"]) in made
            assert policy != "ignore"
            # Dated after every opt-out of that (address, scope) recorded before it, since its last lift.
            last_lift = max((x["seq"] for x in events if x["kind"] == "lifted" and x["seq"] < e["seq"]
                             and (x["address"], x["scope"]) == (e["address"], e["scope"])), default=0)
            for x in events:
                if (x["kind"] in ("suppressed", "changed") and last_lift < x["seq"] < e["seq"]
                        and (x["address"], x["scope"]) == (e["address"], e["scope"])):
                    assert (x["occurred_at"] or x["recorded_at"]) < e["occurred_at"]
                    assert x["reason"] not in ("spam_complaint", "hard_bounce") and x["origin"] != "system"
        honoured_seqs = {e["seq"] for e in honoured}
        # Every release stands on an honoured re-subscribe at that very adapter.
        for address, scope, adapter, seq in store.conn.execute(
                "SELECT address, scope, adapter, seq FROM releases"):
            assert seq in honoured_seqs and (by_seq[seq]["address"], by_seq[seq]["scope"],
                                             by_seq[seq]["source"]) == (address, scope, adapter)
            assert policy == "local"
        # Every lift is a person's (`lift`) or stands on an honoured re-subscribe (policy everywhere).
        lifts = [e for e in events if e["kind"] == "lifted"]
        by_people = [e for e in lifts if json.loads(e["details"])["by"] == "ops"]
        assert len(by_people) == user_lifts
        for e in lifts:
            if e in by_people:
                continue
            assert policy == "everywhere" and e["legal_basis"] == "consent"
            assert json.loads(e["details"])["resubscribe_seq"] in honoured_seqs
        # Vendors were only ever sent opt-outs, and asked to remove one only where a lift said so.
        for name, vendor in vendors.items():
            removals = [(o.address, o.scope) for o in vendor.removed]
            due = [(e["address"], e["scope"]) for e in lifts if name in json.loads(e["details"]).get(
                "propagate_to", [])]
            assert sorted(removals) == sorted(due)
            assert all(o.reason in ("unsubscribed", "manual", "hard_bounce", "spam_complaint", "imported")
                       for call in vendor.apply_calls for o in call)
        store.close()
