"""The Store contract for lifts, count-confirmed imports and webhook receipts, on both backends.

state/lifts.py, state/imports.py and state/receipts.py run on SQLite's Store and on PgStore through
the `any_store` fixture (tests/store_fixtures.py); each test asserts what the store holds afterwards
(rows, events, the error and its exit class). The last tests go through connector/operator.py and
the CLI on PostgreSQL, with settings whose `[store] url_file` names the database.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from state import receipts
from state.errors import InputError, RefusedError
from state.imports import run_import, saved_count
from state.lifts import holders, lift, record_removal
from state.models import APPLIED, ApplyResult, OptOut, Page, Rejected
from state.store import PushOutcome


def _suppress(store, adapter, *optouts):
    store.ingest_page(adapter, Page(list(optouts)))
    return store.promote(adapter)


def _push(store, sink):
    """Push every pending event to `sink` as applied; the addresses it sent."""
    pending, highest = store.pending_events(sink, store.checkpoint(sink).applied_seq, 100)
    store.mark_inflight(sink, [p.seq for p in pending])
    store.record_push(sink, [PushOutcome(p.seq, p.optout, ApplyResult(p.optout, APPLIED)) for p in pending],
                      highest)
    return [p.optout.address for p in pending]


def _rows(store, sql, params=()):
    return [tuple(row) for row in store.conn.execute(sql, params).fetchall()]


def _snapshot(store):
    """Everything a refused lift or import must leave as it was."""
    return (_rows(store, "SELECT address, scope, reason, origin, source, seq FROM suppressions"
                         " ORDER BY address, scope"),
            store.last_event_seq(), _rows(store, "SELECT address, scope, lifted_at, seq FROM lifts ORDER BY address"),
            _rows(store, "SELECT adapter, address, scope FROM staged ORDER BY adapter, address"))


# -- lifts --------------------------------------------------------------------------------------

@pytest.fixture
def lift_store(any_store):
    _suppress(any_store, "crm", OptOut("user@x.io", "*", "manual", "user", "2026-01-01T00:00:00Z"),
              OptOut("spam@x.io", "*", "spam_complaint", "recipient"),
              OptOut("own@x.io", "*", "unsubscribed", "recipient"),
              OptOut("hb@x.io", "*", "hard_bounce", "system"),
              OptOut("user@x.io", "news", "manual", "user"))
    return any_store


def test_a_lift_with_a_legal_basis_removes_the_suppression_and_records_the_event_and_the_lift(lift_store):
    store = lift_store
    store.ingest_page("csv", Page([OptOut("user@x.io", "*", "manual", "user", "2026-02-01T00:00:00Z")]))
    assert store.staged_count("csv") == 0       # already suppressed: held, not staged
    store.ingest_page("csv", Page([OptOut("user@x.io", "news", "manual", "user")]))  # held too

    row = lift(store, "user@x.io", "*", "consent", "asked to be mailed again", by="ops")

    assert (row["address"], row["scope"], row["reason"], row["origin"], row["source"]) == (
        "user@x.io", "*", "manual", "user", "crm")
    assert store.suppression("user@x.io", "*") is None
    assert store.suppression("user@x.io", "news") is not None     # another scope is another opt-out
    lifted = store.events_for("user@x.io")[-1]
    assert (lifted["kind"], lifted["address"], lifted["scope"], lifted["reason"], lifted["origin"], lifted["source"],
            lifted["legal_basis"], lifted["explanation"], lifted["message"], json.loads(lifted["details"])) == (
        "lifted", "user@x.io", "*", "manual", "user", "crm", "consent", "asked to be mailed again",
        "lifted by ops", {"by": "ops"})
    assert lifted["seq"] == store.last_event_seq()
    [(address, scope, lifted_at, seq)] = _rows(store, "SELECT address, scope, lifted_at, seq FROM lifts")
    assert (address, scope, lifted_at, seq) == ("user@x.io", "*", lifted["recorded_at"], lifted["seq"])

    # An observation dated before the lift stays out; one dated after it brings the opt-out back.
    counts = store.ingest_page("csv", Page([OptOut("user@x.io", "*", "manual", "user", "2026-02-01T00:00:00Z")]))
    assert (counts.ignored_lifted, counts.staged) == (1, 0)
    counts = store.ingest_page("csv", Page([OptOut("user@x.io", "*", "manual", "user", "2099-01-01T00:00:00Z")]))
    assert counts.staged == 1 and store.promote("csv") == 1
    assert store.suppression("user@x.io", "*")["source"] == "csv"


def test_a_lift_removes_a_staged_observation_of_the_same_opt_out(lift_store):
    store = lift_store
    store.conn.execute("INSERT INTO staged (address, scope, reason, origin, adapter, staged_at)"
                       " VALUES ('user@x.io', '*', 'manual', 'user', 'csv', '2026-01-02T00:00:00.000000+00:00')")
    lift(store, "user@x.io", "*", "contract", "signed again", by="ops")
    assert store.staged_count("csv") == 0 and store.promote("csv") == 0
    assert store.suppression("user@x.io", "*") is None


@pytest.mark.parametrize("legal_basis, explanation, message", [
    ("because", "asked", "legal basis 'because' is not one of consent, contract, legal_obligation, "
                         "vital_interests, public_task, legitimate_interest"),
    ("", "asked", "legal basis '' is not one of consent, contract, legal_obligation, "
                  "vital_interests, public_task, legitimate_interest"),
    ("consent", "  ", "an explanation is required to lift an opt-out"),
])
def test_a_lift_without_a_legal_basis_or_explanation_is_refused_and_changes_nothing(lift_store, legal_basis,
                                                                                    explanation, message):
    before = _snapshot(lift_store)
    with pytest.raises(InputError) as caught:
        lift(lift_store, "user@x.io", "*", legal_basis, explanation, by="ops")
    assert str(caught.value) == message
    assert _snapshot(lift_store) == before


@pytest.mark.parametrize("address, why", [
    ("spam@x.io", "it is a spam complaint; spam complaints are never lifted"),
    ("own@x.io", "the recipient made it; only the recipient can undo it"),
    ("hb@x.io", "it is a hard bounce reported by a system, not a user's opt-out"),
])
def test_a_lift_of_an_opt_out_no_user_made_is_refused_and_changes_nothing(lift_store, address, why):
    before = _snapshot(lift_store)
    with pytest.raises(RefusedError) as caught:
        lift(lift_store, address, "*", "consent", "asked", by="ops")
    assert str(caught.value) == f"cannot lift the opt-out of {address} (scope '*'): {why}"
    assert _snapshot(lift_store) == before


def test_a_lift_of_a_missing_opt_out_says_so_and_changes_nothing(lift_store):
    before = _snapshot(lift_store)
    with pytest.raises(InputError) as caught:
        lift(lift_store, "nobody@x.io", "*", "consent", "asked", by="ops")
    assert str(caught.value) == "nobody@x.io has no opt-out for scope '*'; nothing to lift"
    with pytest.raises(InputError, match="has no opt-out for scope 'other'"):
        lift(lift_store, "user@x.io", "other", "consent", "asked", by="ops")
    assert _snapshot(lift_store) == before


def test_a_lifted_opt_out_is_no_longer_pending_and_its_holders_get_removal_events(lift_store):
    store = lift_store
    assert _push(store, "esp") == ["user@x.io", "spam@x.io", "own@x.io", "hb@x.io", "user@x.io"]
    source_seq = store.suppression("user@x.io", "*")["seq"]
    store.mark_inflight("ses", [source_seq])      # a send whose outcome a dead process never recorded

    lift(store, "user@x.io", "*", "consent", "asked", by="ops")

    # A sink that had not got it yet never will; its watermark passes the event.
    pending, highest = store.pending_events("csv", 0, 100)
    assert [(p.optout.address, p.optout.scope) for p in pending] == [
        ("spam@x.io", "*"), ("own@x.io", "*"), ("hb@x.io", "*"), ("user@x.io", "news")]
    assert highest >= source_seq
    assert holders(store, "user@x.io", "*") == ("crm", ["esp", "ses"])
    assert holders(store, "nobody@x.io", "*") == (None, [])

    record_removal(store, "user@x.io", "*", "esp", True, "removed")
    record_removal(store, "user@x.io", "*", "ses", False, "HTTP 500")
    assert [(e["kind"], e["target"], e["message"]) for e in store.events_for("user@x.io")
            if e["kind"] in ("lifted", "removed", "remove_failed")] == [
        ("lifted", None, "lifted by ops"), ("removed", "esp", "removed"), ("remove_failed", "ses", "HTTP 500")]
    seqs = [e["seq"] for e in store.events_for("user@x.io")]
    assert seqs == sorted(seqs) and seqs[-1] == store.last_event_seq()


# -- imports ------------------------------------------------------------------------------------

def _import(store, items, confirm=None, **fields):
    options = {"scope": "*", "reason": "imported", "source": "import", "legal_basis": "consent",
               "explanation": "the old list", "details": {"file": "list.csv", "by": "ops"}} | fields
    return run_import(store, items, confirm=confirm, **options)


LIST = ["c@x.io", "a@x.io", "held@x.io", "b@x.io", "a@x.io", Rejected("row 7", "zed", "no @"), "c@x.io"]


def test_an_import_preview_counts_and_changes_nothing_then_the_exact_count_applies_it(any_store):
    store = any_store
    _suppress(store, "crm", OptOut("held@x.io", "*", "unsubscribed", "recipient"))
    before = _snapshot(store)

    preview = _import(store, LIST)
    assert (preview.rows_read, preview.valid, preview.unique, preview.duplicates, preview.already_suppressed,
            preview.new, preview.rejected_count, preview.applied) == (7, 6, 4, 2, 1, 3, 1, False)
    assert [(r.where, r.value, r.reason) for r in preview.rejected_sample] == [("row 7", "zed", "no @")]
    assert _snapshot(store) == before

    done = _import(store, LIST, confirm=3)
    assert (done.unique, done.already_suppressed, done.new, done.applied) == (4, 1, 3, True)
    events = store.events_after(before[1], 100)
    # One event each, in address order, with the import's basis, explanation and details.
    assert [(e["kind"], e["address"], e["scope"], e["reason"], e["origin"], e["source"], e["legal_basis"],
             e["explanation"], json.loads(e["details"])) for e in events] == [
        ("suppressed", address, "*", "imported", "user", "import", "consent", "the old list",
         {"by": "ops", "file": "list.csv"}) for address in ("a@x.io", "b@x.io", "c@x.io")]
    assert [e["seq"] for e in events] == list(range(before[1] + 1, before[1] + 4))
    for event in events:
        row = store.suppression(event["address"], "*")
        assert (row["reason"], row["origin"], row["source"], row["seq"], row["recorded_at"]) == (
            "imported", "user", "import", event["seq"], event["recorded_at"])
    assert store.suppression("held@x.io")["origin"] == "recipient"
    assert saved_count(store, source="import", details={"file": "list.csv", "by": "ops"},
                       since=events[0]["recorded_at"]) == 3
    assert saved_count(store, source="import", details={"file": "other.csv", "by": "ops"},
                       since=events[0]["recorded_at"]) == 0
    # The sinks get them as any other suppression.
    assert [p.optout.address for p in store.pending_events("esp", 0, 100)[0]] == [
        "held@x.io", "a@x.io", "b@x.io", "c@x.io"]


@pytest.mark.parametrize("confirm", [0, 2, 4, 7])
def test_an_import_confirmed_with_any_other_count_is_refused_and_changes_nothing(any_store, confirm):
    store = any_store
    _suppress(store, "crm", OptOut("held@x.io", "*", "unsubscribed", "recipient"))
    before = _snapshot(store)
    with pytest.raises(RefusedError) as caught:
        _import(store, LIST, confirm=confirm)
    assert str(caught.value) == f"the import would add 3 new opt-outs, not {confirm}; nothing was changed"
    assert _snapshot(store) == before
    # The refused attempt leaves nothing behind that the next one trips over.
    assert _import(store, LIST, confirm=3).new == 3
    assert store.count_suppressions() == 4


def test_an_import_keeps_what_is_stored_even_for_a_stronger_reason_and_counts_duplicates_once(any_store):
    store = any_store
    _suppress(store, "crm", OptOut("weak@x.io", "*", "imported", "user"),
              OptOut("topic@x.io", "news", "unsubscribed", "recipient"))
    events_before = store.last_event_seq()
    items = ["weak@x.io", "topic@x.io", "new@x.io", "weak@x.io", "new@x.io", "new@x.io"]

    preview = _import(store, items, reason="manual")
    assert (preview.valid, preview.unique, preview.duplicates, preview.already_suppressed, preview.new) == (
        6, 3, 3, 1, 2)
    done = _import(store, items, confirm=2, reason="manual")
    assert done.applied and done.new == 2
    # A suppression already held keeps its row: an import adds new opt-outs and changes none.
    assert (store.suppression("weak@x.io")["reason"], store.suppression("weak@x.io")["source"]) == ("imported", "crm")
    assert [e["kind"] for e in store.events_for("weak@x.io")] == ["suppressed"]
    # The same address in another scope is a new opt-out of this scope.
    assert store.suppression("topic@x.io", "*")["reason"] == "manual"
    assert store.suppression("topic@x.io", "news")["reason"] == "unsubscribed"
    assert [(e["address"], e["scope"], e["reason"]) for e in store.events_after(events_before, 100)] == [
        ("new@x.io", "*", "manual"), ("topic@x.io", "*", "manual")]
    # Imported again: nothing new, and only 0 is accepted.
    assert _import(store, items, confirm=0, reason="manual").new == 0
    with pytest.raises(RefusedError, match="would add 0 new opt-outs, not 1"):
        _import(store, items, confirm=1, reason="manual")
    assert store.count_suppressions() == 4


def test_an_import_in_several_batches_counts_repeats_across_them(any_store, monkeypatch):
    from state import imports

    monkeypatch.setattr(imports, "CHUNK", 3)
    items = [f"u{n % 5}@x.io" for n in range(11)]      # 5 addresses, over 4 batches
    assert (_import(any_store, items).unique, _import(any_store, items).duplicates) == (5, 6)
    assert _import(any_store, items, confirm=5).applied
    assert [row[0] for row in _rows(any_store, "SELECT address FROM suppressions ORDER BY seq")] == [
        f"u{n}@x.io" for n in range(5)]


# -- receipts -----------------------------------------------------------------------------------

def test_receipts_are_seen_once_per_adapter_and_keep_their_first_time(any_store):
    store = any_store
    with store.transaction():
        receipts.remember(store, "sendgrid", ["ev1", "ev2", "ev1"], "2026-03-01T10:00:00.000000+00:00")
    with store.transaction():
        receipts.remember(store, "sendgrid", ["ev2", "ev3"], "2026-03-02T10:00:00.000000+00:00")
        receipts.remember(store, "mailgun", ["ev1"], "2026-03-02T10:00:00.000000+00:00")

    assert receipts.known(store, "sendgrid", ["ev1", "ev2", "ev3", "ev4", "ev1"]) == {"ev1", "ev2", "ev3"}
    assert receipts.known(store, "mailgun", ["ev1", "ev2"]) == {"ev1"}
    assert receipts.known(store, "postmark", ["ev1"]) == set()
    assert _rows(store, "SELECT adapter, key, received_at FROM webhook_receipts ORDER BY adapter, key") == [
        ("mailgun", "ev1", "2026-03-02T10:00:00.000000+00:00"),
        ("sendgrid", "ev1", "2026-03-01T10:00:00.000000+00:00"),
        ("sendgrid", "ev2", "2026-03-01T10:00:00.000000+00:00"),    # the repeat did not move it
        ("sendgrid", "ev3", "2026-03-02T10:00:00.000000+00:00")]


def test_receipts_written_in_a_transaction_that_fails_are_not_kept(any_store):
    store = any_store
    with pytest.raises(RuntimeError), store.transaction():
        receipts.remember(store, "sendgrid", ["ev1"], "2026-03-01T10:00:00.000000+00:00")
        raise RuntimeError("the request's opt-outs could not be kept")
    assert receipts.known(store, "sendgrid", ["ev1"]) == set()


def test_many_receipts_are_looked_up_in_chunks(any_store):
    store = any_store
    keys = [f"ev{n}" for n in range(1200)]
    with store.transaction():
        receipts.remember(store, "ses", keys[::2], "2026-03-01T10:00:00.000000+00:00")
    assert receipts.known(store, "ses", keys) == set(keys[::2])


def test_pruning_forgets_only_older_receipts_with_the_prefix(any_store):
    store = any_store
    with store.transaction():
        receipts.remember(store, "mailgun", ["nonce:a", "event:a"], "2026-03-01T10:00:00.000000+00:00")
        receipts.remember(store, "mailgun", ["nonce:b", "event:b"], "2026-03-03T10:00:00.000000+00:00")
    assert receipts.prune(store, "2026-03-02T00:00:00.000000+00:00", "nonce:") == 1
    assert receipts.known(store, "mailgun", ["nonce:a", "nonce:b", "event:a", "event:b"]) == {
        "nonce:b", "event:a", "event:b"}
    assert receipts.prune(store, "2026-03-04T00:00:00.000000+00:00") == 3
    assert receipts.known(store, "mailgun", ["nonce:b", "event:a", "event:b"]) == set()


# -- operator level, on PostgreSQL ------------------------------------------------------------------

@pytest.fixture
def pg_world(tmp_path, pg_url):
    """Settings with memory adapters and `[store] url_file` naming a fresh PostgreSQL database."""
    from connector.settings import load_settings
    from state.pg_store import PgStore

    from .backend_fixtures import url_file
    from .conftest import write_settings

    path = write_settings(tmp_path, [{"name": "crm", "type": "memory"}, {"name": "esp", "type": "memory"}],
                          store={"url_file": str(url_file(tmp_path / "secrets", pg_url))})
    return path, load_settings(path, environ={}), lambda: PgStore(pg_url)


def _cli(path, *args):
    from connector.cli import main

    return CliRunner().invoke(main, ["--config", str(path), *args], catch_exceptions=False)


@pytest.mark.postgresql
def test_import_through_the_operator_and_the_cli_on_postgresql(pg_world, tmp_path):
    path, settings, open_pg = pg_world
    with open_pg() as store:
        _suppress(store, "crm", OptOut("known@x.io", "*", "unsubscribed", "recipient"))
    listing = tmp_path / "list.csv"
    listing.write_text("name,email\nA,a@x.io\nB,B@X.io\nb,b@x.io \nK,known@x.io\nZ,zed\n", encoding="utf-8")

    preview = _cli(path, "import", str(listing))
    assert preview.exit_code == 0 and "--confirm 2" in preview.output
    refused = _cli(path, "import", str(listing), "--confirm", "3")
    assert refused.exit_code == 3 and "would add 2 new opt-outs, not 3" in refused.output
    with open_pg() as store:
        assert store.count_suppressions() == 1

    from connector import operator

    _source, done = operator.import_file(settings, listing, confirm=2, legal_basis="consent", explanation="e")
    assert done.applied and (done.new, done.duplicates, done.already_suppressed, done.rejected_count) == (2, 1, 1, 1)
    with open_pg() as store:
        rows = _rows(store, "SELECT address, reason, origin, source FROM suppressions ORDER BY seq")
        assert rows == [("known@x.io", "unsubscribed", "recipient", "crm"), ("a@x.io", "imported", "user", "import"),
                        ("b@x.io", "imported", "user", "import")]
        assert json.loads(store.events_for("a@x.io")[0]["details"])["file"] == "list.csv"


@pytest.mark.postgresql
def test_lift_through_the_operator_and_the_cli_on_postgresql(pg_world):
    from connector import operator

    from . import memory_adapter

    path, settings, open_pg = pg_world
    with open_pg() as store:
        _suppress(store, "crm", OptOut("y@x.io", "*", "manual", "user"), OptOut("own@x.io", "*", "unsubscribed",
                                                                              "recipient"))
        _push(store, "esp")
    esp = operator.build_adapters(settings, ["esp"])["esp"]
    esp.held[("y@x.io", "*")] = OptOut("y@x.io")        # where the push above put it

    refused = _cli(path, "lift", "own@x.io", "--scope", "*", "--legal-basis", "consent", "--explanation", "e")
    assert refused.exit_code == 3 and "only the recipient can undo it" in refused.output
    missing = _cli(path, "lift", "no@x.io", "--scope", "*", "--legal-basis", "consent", "--explanation", "e")
    assert missing.exit_code == 2 and "nothing to lift" in missing.output

    outcome = operator.lift(settings, "Y@x.io", scope="*", legal_basis="contract", explanation="signed",
                            propagate=True)
    assert (outcome.source, outcome.applied_at, outcome.propagated) == ("crm", ["esp"], {"esp": "removed"})
    assert ("y@x.io", "*") not in memory_adapter.VENDORS["esp"].held
    with open_pg() as store:
        assert store.suppression("y@x.io") is None and store.suppression("own@x.io") is not None
        assert [(e["kind"], e["target"], e["legal_basis"]) for e in store.events_for("y@x.io")] == [
            ("suppressed", None, None), ("applied", "esp", None), ("lifted", None, "contract"),
            ("removed", "esp", None)]


# -- PostgreSQL only ------------------------------------------------------------------------------

@pytest.mark.postgresql
def test_an_event_append_outside_a_transaction_is_refused_on_postgresql(pg_url):
    """append_event goes through pg_events, whose append lock lasts only as long as a transaction."""
    from state.errors import StoreError
    from state.pg_store import PgStore

    with PgStore(pg_url) as store:
        with pytest.raises(StoreError, match="an event append must run inside a transaction"):
            store.append_event({"recorded_at": "2026-03-01T10:00:00.000000+00:00", "kind": "removed",
                                "address": "a@x.io", "scope": "*", "target": "esp", "message": "removed"})
        assert store.last_event_seq() == 0


@pytest.mark.postgresql
def test_an_import_of_text_postgresql_cannot_hold_is_one_store_error_and_saves_nothing(pg_url):
    """SQLite stores any text (imports stages a NUL row by row); PostgreSQL's text holds no NUL."""
    from state.errors import StoreError
    from state.pg_store import PgStore

    with PgStore(pg_url) as store:
        with pytest.raises(StoreError) as caught:
            _import(store, ["a@x.io", "b\x00@x.io"], confirm=2)
        assert str(caught.value).endswith(": PostgreSQL text fields cannot contain NUL (0x00) bytes")
        assert store.count_suppressions() == 0 and store.last_event_seq() == 0
        assert _import(store, ["a@x.io"], confirm=1).applied
