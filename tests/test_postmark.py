"""Contract tests of the Postmark adapter against the hand-written fake (tests/fakes/postmark.py).

Each test asserts what the fake now holds or received, or what the store recorded.
"""

from __future__ import annotations

import json

import httpx
import pytest

from adapters import registry
from adapters.postmark import PostmarkAdapter, PostmarkSettings, UnexpectedAnswer
from connector.engine import CycleReport, Engine
from connector.settings import validate_settings
from state.errors import ConfigError, PermanentError, TransientError
from state.models import ALREADY, APPLIED, PERMANENT, OptOut
from state.store import Store

from .fakes.clock import FakeClock
from .fakes.postmark import FakePostmark

TOKEN = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"
TOPICS = {"newsletter": "The newsletter", "product": "Product updates"}
DAY = 86_400


def postmark(fake: FakePostmark | None = None, clock: FakeClock | None = None, **settings):
    """A fake Postmark server and an adapter talking to it through MockTransport, on one pretend clock."""
    clock = clock or FakeClock()
    fake = fake or FakePostmark(TOKEN, clock=clock)
    fake.clock = clock
    config = PostmarkSettings.model_validate({
        "name": "postmark", "server_token": TOKEN, "topics": {"newsletter": "broadcast"},
        "backoff_initial": 1, "backoff_max": 4, **settings})
    adapter = PostmarkAdapter(config, TOPICS, transport=httpx.MockTransport(fake.handle), clock=clock)
    return fake, adapter, clock


def outcomes(results):
    return [(r.optout.address, r.optout.scope, r.outcome) for r in results]


def read(pages):
    optouts, rejected = [], []
    for page in pages:
        optouts += page.optouts
        rejected += page.rejected
    return optouts, rejected


# -- settings and registry -----------------------------------------------------------------------------


def test_postmark_is_a_registered_type_and_validates_from_settings(tmp_path):
    (tmp_path / "postmark.token").write_text(TOKEN + "\n")
    settings = validate_settings({"topics": TOPICS, "adapters": [
        {"name": "pm", "type": "postmark", "server_token_file": "postmark.token",
         "topics": {"newsletter": "broadcast"}}]}, tmp_path / "settings.toml")
    config = settings.adapter("pm")
    assert registry.ADAPTER_TYPES["postmark"] is PostmarkAdapter
    assert config.server_token.get_secret_value() == TOKEN
    assert (config.all_email_stream, config.batch_size, config.base_url) == (
        "outbound", 50, "https://api.postmarkapp.com")
    assert TOKEN not in repr(config) and TOKEN not in str(settings.model_dump())


def test_settings_refuse_oversized_batches_shared_streams_and_an_all_email_topic(tmp_path):
    with pytest.raises(ConfigError) as caught:
        validate_settings({"topics": TOPICS, "adapters": [
            {"name": "pm", "type": "postmark", "server_token": TOKEN, "batch_size": 51,
             "topics": {"newsletter": "broadcast", "product": "broadcast"}}]}, tmp_path / "settings.toml")
    text = str(caught.value)
    assert "batch_size" in text and "same stream" in text and TOKEN not in text
    with pytest.raises(ConfigError, match="all-email stream"):
        validate_settings({"topics": TOPICS, "adapters": [
            {"name": "pm", "type": "postmark", "server_token": TOKEN, "topics": {"newsletter": "outbound"}}]},
            tmp_path / "settings.toml")


# -- reading: each mapping -------------------------------------------------------------------------------


def test_reasons_origins_and_streams_map_to_opt_outs():
    fake, adapter, clock = postmark()
    at = clock.now - 3600
    fake.suppress("All.Out@example.com", "outbound", "ManualSuppression", "Recipient", at=at)
    fake.suppress("news@example.com", "broadcast", "ManualSuppression", "Recipient", at=at)
    fake.suppress("by-us@example.com", "broadcast", "ManualSuppression", "Customer", at=at)
    fake.suppress("by-staff@example.com", "outbound", "ManualSuppression", "Admin", at=at)
    fake.suppress("gone@example.com", "broadcast", "HardBounce", "Recipient", at=at)
    fake.suppress("angry@example.com", "broadcast", "SpamComplaint", "Recipient", at=at)
    fake.suppress("ignored@example.com", "inbound", "ManualSuppression", "Recipient", at=at)
    optouts, rejected = read(adapter.read_changes(None))
    got = {(o.address, o.scope): (o.reason, o.origin) for o in optouts}
    assert got == {
        ("all.out@example.com", "*"): ("unsubscribed", "recipient"),
        ("news@example.com", "newsletter"): ("unsubscribed", "recipient"),
        ("by-us@example.com", "newsletter"): ("manual", "user"),
        ("by-staff@example.com", "*"): ("manual", "user"),
        ("gone@example.com", "*"): ("hard_bounce", "system"),
        ("angry@example.com", "*"): ("spam_complaint", "system"),
    }
    bounce = next(o for o in optouts if o.address == "gone@example.com")
    assert bounce.details == {"postmark_stream": "broadcast", "postmark_reason": "HardBounce",
                              "postmark_origin": "Recipient"}
    # CreatedAt comes with a -05:00 offset; the store gets UTC.
    assert bounce.occurred_at == "2023-11-14T21:13:20.000000+00:00"
    assert rejected == []
    assert not fake.calls("/message-streams/inbound/")


def test_increments_read_from_the_newest_seen_minus_the_overlap_and_list_problems_once():
    fake, adapter, clock = postmark()
    fake.suppress("old@example.com", "broadcast", at=clock.now - 10 * DAY)
    fake.suppress("not-an-address", "broadcast", at=clock.now - 10 * DAY)
    first = list(adapter.read_changes(None))
    assert sorted(o.address for o in read(first)[0]) == ["old@example.com"]
    assert [r.value for r in read(first)[1]] == ["not-an-address"]
    cursor = first[-1].cursor
    assert json.loads(cursor)["newest"].startswith("2023-11-04T")
    assert all("fromdate" not in c.params for c in fake.calls("/dump"))
    clock.advance(DAY)
    fake.suppress("new@example.com", "outbound", at=clock.now - 60)
    second = list(adapter.read_changes(cursor))
    assert {c.params.get("fromdate") for c in fake.calls("/dump")[-2:]} == {"2023-11-03"}
    optouts, rejected = read(second)
    # The newest day seen is read again (the overlap); its problem is not listed again.
    assert sorted(o.address for o in optouts) == ["new@example.com", "old@example.com"] and rejected == []
    assert json.loads(second[-1].cursor)["newest"] > json.loads(cursor)["newest"]
    clock.advance(3 * DAY)
    third = list(adapter.read_changes(second[-1].cursor))
    assert [o.address for o in read(third)[0]] == ["new@example.com"]  # only the overlap, read again


def test_first_read_may_start_at_an_initial_lookback():
    fake, adapter, _ = postmark(initial_lookback_days=30)
    list(adapter.read_changes(None))
    assert {c.params["fromdate"] for c in fake.calls("/dump")} == {"2023-10-15"}


def test_a_large_dump_is_handed_over_in_pages_with_the_cursor_on_the_last():
    fake, adapter, clock = postmark(page_size=1000)
    for i in range(2500):
        fake.suppress(f"u{i:04d}@example.com", "broadcast", at=clock.now - i)
    pages = list(adapter.read_changes(None))
    assert [len(p.optouts) for p in pages] == [1000, 1000, 500]
    assert [p.cursor is not None for p in pages] == [False, False, True]
    assert len(fake.calls("/dump")) == 2
    assert sum(len(p.optouts) for p in adapter.read_all()) == 2500


def test_repeated_reads_have_no_duplicate_effects_in_the_store(tmp_path):
    fake, adapter, clock = postmark()
    fake.suppress("a@example.com", "broadcast", at=clock.now - 10)
    fake.suppress("b@example.com", "outbound", "HardBounce", at=clock.now - 10)
    store = Store(tmp_path / "store.db")
    for _ in range(3):
        for page in adapter.read_changes(store.checkpoint("postmark").read_cursor):
            store.ingest_page("postmark", page)
        store.promote("postmark")
        clock.advance(60)
    assert store.count_suppressions() == 2
    assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    store.close()


# -- writing -------------------------------------------------------------------------------------------------


def test_topic_and_all_email_opt_outs_go_to_their_streams():
    fake, adapter, _ = postmark()
    results = adapter.apply([OptOut("t@example.com", "newsletter", reason="imported", origin="user"),
                             OptOut("g@example.com")])
    assert outcomes(results) == [("t@example.com", "newsletter", APPLIED), ("g@example.com", "*", APPLIED)]
    assert fake.held("broadcast") == {"t@example.com": ("ManualSuppression", "Customer"),
                                      "g@example.com": ("ManualSuppression", "Customer")}
    assert fake.held("outbound") == {"g@example.com": ("ManualSuppression", "Customer")}
    assert fake.calls("/broadcast/suppressions", "POST")[0].body == {
        "Suppressions": [{"EmailAddress": "t@example.com"}, {"EmailAddress": "g@example.com"}]}


def test_calls_carry_at_most_50_addresses_and_the_fake_refuses_51():
    fake, adapter, _ = postmark()
    results = adapter.apply([OptOut(f"u{i}@example.com", "newsletter") for i in range(120)])
    assert all(r.outcome == APPLIED for r in results)
    assert [len(c.body["Suppressions"]) for c in fake.calls("/suppressions", "POST")] == [50, 50, 20]
    client = httpx.Client(transport=httpx.MockTransport(fake.handle), headers={"X-Postmark-Server-Token": TOKEN})
    answer = client.post("https://api.postmarkapp.com/message-streams/broadcast/suppressions",
                         json={"Suppressions": [{"EmailAddress": f"x{i}@example.com"} for i in range(51)]})
    assert answer.status_code == 422 and answer.json()["ErrorCode"] == 410


def test_a_failed_address_fails_alone_with_postmarks_message():
    fake, adapter, _ = postmark()
    results = adapter.apply([OptOut("a@example.com", "newsletter"), OptOut("bad@@example.com", "newsletter"),
                             OptOut("b@example.com", "newsletter"), OptOut("c@example.com", "product")])
    assert outcomes(results) == [("a@example.com", "newsletter", APPLIED),
                                 ("bad@@example.com", "newsletter", PERMANENT),
                                 ("b@example.com", "newsletter", APPLIED), ("c@example.com", "product", PERMANENT)]
    assert "Failed: Invalid email address." in results[1].message and "no Postmark stream" in results[3].message
    assert set(fake.held("broadcast")) == {"a@example.com", "b@example.com"}


def test_repeating_a_write_is_a_success_that_keeps_what_postmark_held():
    fake, adapter, _ = postmark()
    fake.suppress("bounced@example.com", "broadcast", "HardBounce")
    for _ in range(2):
        results = adapter.apply([OptOut("bounced@example.com", "newsletter"), OptOut("n@example.com", "newsletter")])
        assert all(r.ok for r in results)
    assert fake.held("broadcast") == {"bounced@example.com": ("HardBounce", "Recipient"),
                                      "n@example.com": ("ManualSuppression", "Customer")}


# -- the shared policy: 429, 5xx, budget, credentials ----------------------------------------------------------


def test_429_is_waited_out_and_everything_lands():
    fake, adapter, clock = postmark()
    fake.fail(429, times=2, error_code=429, message="Rate limit exceeded", headers={"Retry-After": "2"})
    assert outcomes(adapter.apply([OptOut("a@example.com", "newsletter")])) == [
        ("a@example.com", "newsletter", APPLIED)]
    assert clock.sleeps == [2.0, 2.0] and "a@example.com" in fake.held("broadcast")


def test_5xx_is_retried_and_recovers_during_a_read():
    fake, adapter, clock = postmark()
    fake.suppress("a@example.com", "broadcast")
    fake.fail(500, times=2, path="/dump", message="Internal server error")
    optouts, _ = read(adapter.read_changes(None))
    assert [o.address for o in optouts] == ["a@example.com"] and len(clock.sleeps) == 2


def test_a_batch_that_cannot_be_sent_within_the_budget_raises_transient():
    fake, adapter, _ = postmark(retry_budget="5s")
    fake.fail(503, times=100)
    with pytest.raises(TransientError):
        adapter.apply([OptOut("a@example.com", "newsletter")])
    assert fake.held("broadcast") == {}


def test_bad_token_is_an_adapter_error_and_never_leaks():
    fake, adapter, _ = postmark(FakePostmark("another-token"))
    with pytest.raises(PermanentError) as caught:
        adapter.apply([OptOut("a@example.com", "newsletter")])
    text = str(caught.value)
    assert "401" in text and "ErrorCode 10" in text and TOKEN not in text
    assert TOKEN not in repr(adapter) and TOKEN not in repr(adapter.http)
    with pytest.raises(PermanentError):
        adapter.check()


def test_a_vendor_message_echoing_the_token_is_scrubbed():
    fake, adapter, _ = postmark()
    fake.fail(422, error_code=300, message=f"token {TOKEN} is not allowed here")
    [result] = adapter.apply([OptOut("a@example.com", "newsletter")])
    assert result.outcome == PERMANENT and TOKEN not in result.message and "***" in result.message


def test_an_answer_of_the_wrong_shape_is_a_clear_adapter_error():
    fake, adapter, clock = postmark()
    adapter = PostmarkAdapter(adapter.settings, TOPICS, clock=clock, transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json={"Suppressions": [{"Email": "x"}]})))
    with pytest.raises(UnexpectedAnswer, match="unexpected shape"):
        list(adapter.read_changes(None))


# -- lift and check ---------------------------------------------------------------------------------------------


def test_remove_deletes_only_what_the_customer_made_and_says_why_for_the_rest():
    fake, adapter, _ = postmark()
    adapter.apply([OptOut("ours@example.com"), OptOut("ours-topic@example.com", "newsletter")])
    fake.suppress("theirs@example.com", "broadcast", "ManualSuppression", "Recipient")
    fake.suppress("spam@example.com", "broadcast", "SpamComplaint", "Recipient")
    fake.suppress("bounce@example.com", "broadcast", "HardBounce", "Recipient")
    results = adapter.remove([OptOut("ours@example.com"), OptOut("ours-topic@example.com", "newsletter"),
                              OptOut("theirs@example.com", "newsletter"), OptOut("spam@example.com", "newsletter"),
                              OptOut("bounce@example.com", "newsletter"), OptOut("absent@example.com", "newsletter")])
    assert [r.outcome for r in results] == [APPLIED, APPLIED, PERMANENT, PERMANENT, PERMANENT, ALREADY]
    assert "only the recipient can undo it" in results[2].message
    assert "spam complaint" in results[3].message and "hard bounce" in results[4].message
    assert set(fake.held("broadcast")) == {"theirs@example.com", "spam@example.com", "bounce@example.com"}
    assert fake.held("outbound") == {}
    assert [c.body for c in fake.calls("/suppressions/delete")] == [
        {"Suppressions": [{"EmailAddress": "ours@example.com"}]},
        {"Suppressions": [{"EmailAddress": "ours@example.com"}, {"EmailAddress": "ours-topic@example.com"}]}]


def test_check_lists_streams_and_flags_unmapped_ones_without_changing_anything():
    fake = FakePostmark(TOKEN, streams={"outbound": "Transactional", "broadcast": "Broadcasts",
                                        "events": "Broadcasts", "inbound": "Inbound"})
    fake, adapter, _ = postmark(fake)
    lines = adapter.check()
    assert lines[0] == "server token: valid (4 message streams)"
    assert "stream outbound (Transactional) -> all email (*)" in lines
    assert "stream broadcast (Broadcasts) -> topic newsletter" in lines
    assert any(line.startswith("UNMAPPED: stream events (Broadcasts)") for line in lines)
    assert not any("inbound" in line for line in lines)
    assert not fake.calls(method="POST")


def test_check_fails_on_a_stream_the_server_does_not_have():
    fake, adapter, _ = postmark(topics={"newsletter": "newsletters"})
    with pytest.raises(ConfigError, match="'newsletters' .*does not exist"):
        adapter.check()


# -- through the engine, with a real store -----------------------------------------------------------------------


def test_opt_outs_flow_both_ways_through_the_engine_and_our_echo_changes_nothing(tmp_path, memory_world):
    _, store, _, built = memory_world([{"name": "inbox"}], topics=TOPICS)
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS, "adapters": [
        {"name": "inbox", "type": "memory", "interval": 1},
        {"name": "postmark", "type": "postmark", "server_token": TOKEN, "topics": {"newsletter": "broadcast"}}]},
        tmp_path / "settings.toml")
    fake = FakePostmark(TOKEN, processing_delay=30)
    fake, adapter, clock = postmark(fake)
    engine = Engine(settings, store, {"inbox": built["inbox"], "postmark": adapter})
    built["inbox"].opt_out(OptOut("from-inbox@example.com", reason="manual", origin="user"))
    built["inbox"].opt_out(OptOut("topic@example.com", "newsletter", reason="manual", origin="user"))
    fake.suppress("unsub@example.com", "broadcast", "ManualSuppression", "Recipient", at=clock.now - 30)
    fake.suppress("bounced@example.com", "outbound", "HardBounce", "Recipient", at=clock.now - 30)
    fake.suppress("spam@example.com", "broadcast", "SpamComplaint", "Recipient", at=clock.now - 30)
    reports = engine.sync_once()
    assert all(r.error is None for r in reports), [r.error for r in reports]
    assert fake.held("outbound")["from-inbox@example.com"] == ("ManualSuppression", "Customer")
    assert set(fake.held("broadcast")) >= {"from-inbox@example.com", "topic@example.com"}
    assert store.suppression("unsub@example.com", "newsletter")["origin"] == "recipient"
    assert store.suppression("bounced@example.com")["reason"] == "hard_bounce"
    assert store.suppression("spam@example.com")["reason"] == "spam_complaint"
    assert {("bounced@example.com", "*"), ("spam@example.com", "*")} <= set(built["inbox"].held)
    suppressed = store.conn.execute("SELECT count(*) FROM events WHERE kind = 'suppressed'").fetchone()[0]
    clock.advance(60)  # Postmark has processed our writes: they show in the dump now
    assert all(r.error is None for r in engine.sync_once())
    # Our own writes read back as Customer-made manual suppressions: never stronger than a user's opt-out.
    assert store.suppression("from-inbox@example.com")["origin"] == "user"
    assert store.suppression("topic@example.com", "newsletter")["origin"] == "user"
    assert len(fake.calls("/suppressions", "POST")) == 2
    # The all-email write also suppressed the topic stream: that read-back is its echo, not a topic opt-out.
    assert store.conn.execute("SELECT count(*) FROM events WHERE kind = 'suppressed'").fetchone()[0] == suppressed
    assert store.suppression("from-inbox@example.com", "newsletter") is None


def test_a_parked_batch_holds_the_watermark_until_it_lands(tmp_path, memory_world):
    _, store, _, built = memory_world([{"name": "inbox", "role": "read"}], topics=TOPICS)
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS, "adapters": [
        {"name": "inbox", "type": "memory", "role": "read"},
        {"name": "postmark", "type": "postmark", "role": "write", "server_token": TOKEN}]},
        tmp_path / "settings.toml")
    fake, adapter, _ = postmark(retry_budget="5s")
    engine = Engine(settings, store, {"inbox": built["inbox"], "postmark": adapter})
    built["inbox"].opt_out(OptOut("a@example.com", reason="imported", origin="user"))
    engine.pull("inbox", CycleReport("inbox"))
    fake.fail(503, times=100, headers={"Retry-After": "3"})
    report = engine.cycle("postmark")
    assert isinstance(report.error, TransientError) and report.parked == 1
    assert store.checkpoint("postmark").applied_seq == 0
    fake.faults.clear()
    report = engine.cycle("postmark")
    assert report.error is None and report.pushed == 1 and "a@example.com" in fake.held("outbound")
    assert store.checkpoint("postmark").applied_seq == 1


def test_a_split_call_cut_short_parks_its_other_half_unsent():
    # A call refused whole is split; when its first half cannot be sent within the budget, the second
    # half was never sent either and must wait for the next cycle (never reported as written).
    fake, adapter, _ = postmark(retry_budget="5s")
    fake.fail(422, method="POST", path="/suppressions", error_code=300, message="Invalid request")
    fake.fail(503, times=100)
    results = adapter.apply([OptOut("a@example.com", "newsletter"), OptOut("b@example.com", "newsletter"),
                             OptOut("c@example.com", "product")])
    assert outcomes(results) == [("a@example.com", "newsletter", "transient"),
                                 ("b@example.com", "newsletter", "transient"), ("c@example.com", "product", PERMANENT)]
    assert "not sent: an earlier call of this batch" in results[1].message
    sent = [[s["EmailAddress"] for s in c.body["Suppressions"]] for c in fake.calls("/suppressions", "POST")]
    assert all(addresses != ["b@example.com"] for addresses in sent) and fake.held("broadcast") == {}
