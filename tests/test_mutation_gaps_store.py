"""Rules of the store that a mutation run showed no plain test could fail (issue 14, docs/testing.md).

These run in the mutation run's selection (pyproject.toml [tool.mutmut]): plain tests on SQLite, or on
`any_store`, whose PostgreSQL half the mutation run leaves out. Covered here: the copy proof's value
encoding (state/store_copy.py `_encoded`, `digest`), the NUL check of a page's notices and re-subscribes
(state/store.py `_without_nul`), the JSON fast path of loading a page (`Store._load_incoming`) and the
apply latencies the metrics read (state/dashboard.py `apply_latencies`).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from connector.metrics import Metrics
from state import dashboard
from state.models import ALREADY, APPLIED, ApplyResult, OptOut, Page, Resubscribe, to_utc_iso
from state.store import PushOutcome, Store, _without_nul
from state.store_copy import TableFacts, digest


def _sha(*lines: bytes) -> str:
    return hashlib.sha256(b"".join(lines)).hexdigest()


# -- the copy proof: a documented format, the same on both backends and across versions ----------------
#
# Each value is typed and length-prefixed: N (NULL); I<decimal> (integer, a boolean as 0 or 1);
# F<repr> (float); T<byte length>:<UTF-8, lone surrogates kept> (text); B<length>:<bytes> (blob).
# A row is its values joined by "|" and ended by "\n"; the digest is SHA-256 over the rows in key order.
# The expected digests below are written from that format, not from the code.


def test_a_known_row_of_every_type_has_the_documented_digest():
    row = (None, 42, -7, True, False, 0.5, "né", b"\x00|\xff", memoryview(b"ab"))
    line = b"N|I42|I-7|I1|I0|F0.5|T3:n\xc3\xa9|B3:\x00|\xff|B2:ab\n"
    assert digest([row]) == TableFacts(1, _sha(line))


def test_a_lone_surrogate_is_encoded_not_refused():
    # PostgreSQL cannot hold one, but a SQLite text read by Python can: the proof must not fail on it.
    assert digest([("a\ud800",)]) == TableFacts(1, _sha(b"T4:a\xed\xa0\x80\n"))


def test_the_row_count_is_exact_and_every_row_is_in_the_digest():
    assert digest([]) == TableFacts(0, _sha())
    assert digest(iter([(1, "x")])) == TableFacts(1, _sha(b"I1|T1:x\n"))
    rows = [(1, "x"), (2, None), (3, 2.25)]
    assert digest(iter(rows)) == TableFacts(3, _sha(b"I1|T1:x\n", b"I2|N\n", b"I3|F2.25\n"))


def test_values_that_print_alike_give_different_digests():
    alike = [[(None,)], [("",)], [("N",)], [("None",)],
             [(1,)], [("1",)], [(1.0,)], [("I1",)],
             [(b"ab",)], [("ab",)], [("é",)], [("e",)]]
    assert len({digest(rows).sha256 for rows in alike}) == len(alike)
    # A stored boolean is an integer on SQLite: PostgreSQL's true must prove equal to SQLite's 1.
    assert digest([(True,)]) == digest([(1,)])


def test_the_field_and_row_boundaries_are_part_of_the_digest():
    assert digest([("ab", "c")]).sha256 != digest([("a", "bc")]).sha256
    assert digest([("a",), ("b",)]).sha256 != digest([("a", "b")]).sha256
    assert digest([("a|b",)]).sha256 != digest([("a", "b")]).sha256


# -- a NUL character in a page's notices and re-subscribes ---------------------------------------------


def _failures(store) -> list[tuple]:
    return store.conn.execute(
        "SELECT adapter, kind, location, value, message FROM failures ORDER BY id").fetchall()


def _observed(store) -> list[tuple]:
    return store.conn.execute(
        "SELECT address, scope, source FROM events WHERE kind = 'observed' ORDER BY seq").fetchall()


def _opted_out(store, adapter, *addresses):
    store.ingest_page(adapter, Page([OptOut(a) for a in addresses]))
    store.promote(adapter)


NUL_REASON = "NUL character in the address or scope"


def test_a_nul_only_in_a_notice_is_rejected_and_the_rest_of_the_page_is_stored(any_store):
    counts = any_store.ingest_page("esp", Page([OptOut("a@x.io")], cursor="c1",
                                               notices=[OptOut("n1@x.io"), OptOut("n\x002@x.io")]))
    assert counts.rejected == 1 and counts.staged == 1
    assert _failures(any_store) == [("esp", "rejected", "esp: notice 2 of a page", "n\\x002@x.io *", NUL_REASON)]
    assert _observed(any_store) == [("n1@x.io", "*", "esp")]
    assert any_store.checkpoint("esp").read_cursor == "c1"


def test_a_nul_only_in_a_resubscribe_is_rejected_and_the_rest_of_the_page_is_stored(any_store):
    _opted_out(any_store, "crm", "r1@x.io")
    now = to_utc_iso(datetime.now(timezone.utc))
    counts = any_store.ingest_page("esp", Page(
        [OptOut("a@x.io")], cursor="c1",
        resubscribes=[Resubscribe("r1@x.io", "*", "recipient", now, {"id": 1}),
                      Resubscribe("r1@x.io", "*\x00", "recipient", now, {"id": 2})]))
    assert (counts.rejected, counts.staged, counts.released) == (1, 1, 1)
    assert _failures(any_store) == [("esp", "rejected", "esp: re-subscribe 2 of a page", "r1@x.io *\\x00", NUL_REASON)]
    assert any_store.conn.execute("SELECT address, scope, adapter FROM releases").fetchall() == [
        ("r1@x.io", "*", "esp")]
    assert any_store.checkpoint("esp").read_cursor == "c1"


def test_nuls_in_optouts_leave_the_pages_clean_notices_and_resubscribes_in_place(any_store):
    _opted_out(any_store, "crm", "r1@x.io")
    now = to_utc_iso(datetime.now(timezone.utc))
    counts = any_store.ingest_page("esp", Page(
        [OptOut("a\x00@x.io"), OptOut("b@x.io")], cursor="c1", notices=[OptOut("n1@x.io")],
        resubscribes=[Resubscribe("r1@x.io", "*", "recipient", now, {"id": 1})]))
    assert (counts.rejected, counts.staged, counts.released) == (1, 1, 1)
    assert [f[2] for f in _failures(any_store)] == ["esp: opt-out 1 of a page"]
    assert _observed(any_store) == [("n1@x.io", "*", "esp")]
    assert any_store.conn.execute("SELECT address, scope, adapter FROM releases").fetchall() == [
        ("r1@x.io", "*", "esp")]


def test_the_page_without_nul_items_keeps_every_clean_item_of_each_kind():
    # The page PostgreSQL is given: no NUL item may reach a statement there (it would fail the page),
    # whether or not the SQLite store would have acted on it.
    clean_resubscribe = Resubscribe("r1@x.io", "*", "recipient", None, {})
    page = Page([OptOut("a@x.io"), OptOut("b\x00@x.io")], cursor="c1",
                notices=[OptOut("n\x00@x.io"), OptOut("n1@x.io")],
                resubscribes=[clean_resubscribe, Resubscribe("r\x00@x.io", "*", "admin", None, {})])
    kept = _without_nul("esp", page)
    assert kept.optouts == [OptOut("a@x.io")]
    assert kept.notices == [OptOut("n1@x.io")]
    assert kept.resubscribes == [clean_resubscribe]
    assert [r.where for r in kept.rejected] == ["esp: opt-out 2 of a page", "esp: notice 1 of a page",
                                               "esp: re-subscribe 2 of a page"]
    assert kept.cursor == "c1"


# -- loading a page: the one-statement JSON path, and the row-by-row path for text holding NUL ----------
#
# Only a NUL-free page goes through json_each (`->>` would cut a text at a NUL character). Of an
# adapter's opt-outs, only `details` can hold a NUL (address and scope are rejected, reason and origin
# come from fixed lists, an occurred_at holding one is unparseable), and JSON text keeps it escaped on
# either path; the store's library API takes any text in reason and origin, and must keep it whole.


def _loads_of_incoming(store: Store) -> list[str]:
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    return statements


def test_a_page_without_nul_is_loaded_in_one_statement_and_stored_intact(tmp_path):
    page = [OptOut("a@x.io", "*", "spam_complaint", "system", "2026-01-02T03:04:05+00:00",
                   {"note": "é ✓", "n": 1.5, "ids": [1, None]}),
            OptOut("b@x.io", "news", "manual", "user", None, None),
            OptOut("c@x.io", "*", "hard_bounce", "system", None, {"code": 550})]
    with Store(tmp_path / "store.db") as store:
        statements = _loads_of_incoming(store)
        counts = store.ingest_page("src", Page(page))
        store.conn.set_trace_callback(None)
        assert counts.staged == 3
        assert len([s for s in statements if s.startswith("INSERT INTO incoming")]) == 1
        assert store.staged_optouts("src") == [
            OptOut("a@x.io", "*", "spam_complaint", "system", "2026-01-02T03:04:05.000000+00:00",
                   {"note": "é ✓", "n": 1.5, "ids": [1, None]}),
            page[1], page[2]]


def test_text_holding_nul_is_stored_whole(tmp_path):
    with Store(tmp_path / "store.db") as store:
        store.ingest_page("src", Page([OptOut("a@x.io", details={"note": "before\x00after"}),
                                       OptOut("b@x.io", "*", "manual", "us\x00er", None, {"k": "v"}),
                                       OptOut("c@x.io")]))
        assert store.staged_optouts("src") == [
            OptOut("a@x.io", details={"note": "before\x00after"}),
            OptOut("b@x.io", "*", "manual", "us\x00er", None, {"k": "v"}),
            OptOut("c@x.io")]


# -- apply latencies (the metrics' histogram) -----------------------------------------------------------


def _applied_history(store) -> list[dict]:
    """a@ (dated two hours ago), b@ and c@ (undated) applied to esp (b@ already held there) and crm."""
    two_hours_ago = to_utc_iso(datetime.now(timezone.utc) - timedelta(hours=2))
    store.ingest_page("src", Page([OptOut("a@x.io", occurred_at=two_hours_ago), OptOut("b@x.io"), OptOut("c@x.io")]))
    store.promote("src")
    for sink, outcomes in (("esp", (APPLIED, ALREADY, APPLIED)), ("crm", (APPLIED, APPLIED, APPLIED))):
        pending, highest = store.pending_events(sink, 0, 100)
        store.record_push(sink, [PushOutcome(p.seq, p.optout, ApplyResult(p.optout, outcome))
                                 for p, outcome in zip(pending, outcomes, strict=True)], highest)
    return store.events_after(0, 100)


def _expected_latencies(events: list[dict]) -> dict[int, tuple[str, float]]:
    """seq -> (sink, seconds) of each applied event not already held: from occurred_at, else recorded_at."""
    by_seq = {e["seq"]: e for e in events}
    expected = {}
    for event in events:
        if event["kind"] == "applied" and '"already"' not in (event["details"] or ""):
            source = by_seq[event["ref_seq"]]
            seconds = (datetime.fromisoformat(event["recorded_at"])
                       - datetime.fromisoformat(source["occurred_at"] or source["recorded_at"])).total_seconds()
            expected[event["seq"]] = (event["target"], seconds)
    return expected


def _check(rows, expected: dict[int, tuple[str, float]], seqs: list[int]) -> None:
    assert [(seq, sink) for seq, sink, _ in rows] == [(seq, expected[seq][0]) for seq in seqs]
    for seq, _sink, seconds in rows:
        assert seconds == pytest.approx(expected[seq][1], abs=0.01)


def test_apply_latencies_are_each_apply_in_the_bounds_oldest_first_leaving_out_already_held(any_store):
    events = _applied_history(any_store)
    expected = _expected_latencies(events)
    applied = [e["seq"] for e in events if e["kind"] == "applied"]
    assert len(applied) == 6 and len(expected) == 5  # esp's b@ was already held
    held = next(e["seq"] for e in events if e["kind"] == "applied" and '"already"' in e["details"])
    everything = [seq for seq in applied if seq != held]
    end = any_store.last_event_seq()

    _check(dashboard.apply_latencies(any_store, 0, end, 100), expected, everything)
    # (after, end]: the first apply is left out, the apply at `end` is in, those after `end` are not.
    _check(dashboard.apply_latencies(any_store, everything[0], everything[3], 100), expected, everything[1:4])
    _check(dashboard.apply_latencies(any_store, 0, end, 2), expected, everything[:2])
    assert dashboard.apply_latencies(any_store, end, end, 100) == []
    # The dated opt-out waited two hours; the undated ones count from when they were stored.
    assert expected[everything[0]][1] == pytest.approx(7200, abs=5)


def test_the_metrics_observe_every_apply_since_the_last_look_in_chunks(tmp_path, monkeypatch):
    from connector import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "LATENCY_CHUNK", 2)
    metrics = Metrics(["esp", "crm"])
    with Store(tmp_path / "store.db") as store:
        assert metrics.observe_applies(store) == 0  # notes where the log ends
        expected = _expected_latencies(_applied_history(store))
        assert metrics.observe_applies(store) == 5
        assert metrics.observe_applies(store) == 0
    samples = {(s.name, s.labels["adapter"]): s.value for family in metrics.registry.collect()
               if family.name.endswith("apply_latency_seconds") for s in family.samples
               if s.name.endswith(("_count", "_sum"))}
    by_sink = {sink: [seconds for target, seconds in expected.values() if target == sink] for sink in ("esp", "crm")}
    for sink, seconds in by_sink.items():
        assert samples[("optout_sync_apply_latency_seconds_count", sink)] == len(seconds)
        assert samples[("optout_sync_apply_latency_seconds_sum", sink)] == pytest.approx(sum(seconds), abs=0.05)
