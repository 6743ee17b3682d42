"""Contract tests of the HubSpot adapter against the hand-written fake (tests/fakes/hubspot.py).

Each test asserts what the fake received and now holds, or what the store
recorded, never merely that code ran.
"""

from __future__ import annotations

import random

import httpx
import pytest
from pydantic import ValidationError

from adapters import registry
from adapters.hubspot import HubSpotAdapter, HubSpotSettings, UnexpectedAnswer
from connector.engine import CycleReport, Engine
from connector.settings import validate_settings
from state.errors import ConfigError, PermanentError, TransientError
from state.models import ALREADY, APPLIED, PERMANENT, TRANSIENT, OptOut
from state.store import Store

from .fakes.clock import FakeClock
from .fakes.hubspot import ALL_SCOPES, FakeHubSpot

TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"
TOPICS = {"newsletter": "The newsletter", "product": "Product updates", "brand_b": "Brand B newsletter"}
BATCH_WRITE = "/communication-preferences/v4/statuses/batch/write"
BATCH_WIDE = "/communication-preferences/v4/statuses/batch/unsubscribe-all"


def hubspot(fake: FakeHubSpot | None = None, clock: FakeClock | None = None, **settings):
    """A fake HubSpot and an adapter talking to it through MockTransport, on one pretend clock."""
    clock = clock or FakeClock()
    fake = fake or FakeHubSpot(TOKEN, clock=clock)
    fake.clock = clock
    config = HubSpotSettings.model_validate({
        "name": "hubspot", "token": TOKEN, "topics": {"newsletter": "101", "product": "102"},
        "legal_basis": "LEGITIMATE_INTEREST_OTHER", "legal_basis_explanation": "Recipient asked elsewhere",
        "backoff_initial": 1, "backoff_max": 4, **settings})
    adapter = HubSpotAdapter(config, TOPICS, transport=httpx.MockTransport(fake.handle), clock=clock)
    return fake, adapter, clock


def outcomes(results):
    return [(r.optout.address, r.optout.scope, r.outcome) for r in results]


def assert_never_subscribed_or_created(fake: FakeHubSpot, contacts_before: int = 0):
    assert fake.api_subscribes == []
    assert not fake.calls("/communication-preferences/v3/")
    assert not [r for r in fake.requests if r.path == "/crm/v3/objects/contacts" or "batch/create" in r.path
                or "batch/upsert" in r.path]
    assert len(fake.contacts) == contacts_before


# -- settings and registry ---------------------------------------------------------------------------


def test_hubspot_is_a_registered_type_and_validates_from_settings(tmp_path):
    (tmp_path / "token.txt").write_text(TOKEN + "\n")
    settings = validate_settings({"topics": TOPICS, "adapters": [
        {"name": "hs", "type": "hubspot", "token_file": "token.txt", "topics": {"newsletter": "101"}}]},
        tmp_path / "settings.toml")
    config = settings.adapter("hs")
    assert registry.ADAPTER_TYPES["hubspot"] is HubSpotAdapter
    assert config.token.get_secret_value() == TOKEN
    assert config.batch_size == 100 and config.base_url == "https://api.hubapi.com"
    # A documented share (40 %) of the smallest burst limit, 100 per 10 s, which other integrations share.
    assert (config.rate_limit_requests, config.rate_limit_period) == (40, 10.0)
    # HubSpot's 4 searches per second, with a quarter of a second's margin for arrival jitter.
    assert (config.search_rate_limit_requests, config.search_rate_limit_period) == (4, 1.25)
    assert config.timeline_window is None and config.batch_recheck_every == 86_400
    assert TOKEN not in repr(config) and TOKEN not in str(settings.model_dump())


def test_settings_refuse_plain_http_and_non_integer_subscription_ids(tmp_path):
    with pytest.raises(ConfigError) as caught:
        validate_settings({"topics": TOPICS, "adapters": [
            {"name": "hs", "type": "hubspot", "token": TOKEN, "base_url": "http://api.hubapi.com",
             "topics": {"newsletter": "news"}}]}, tmp_path / "settings.toml")
    text = str(caught.value)
    assert "base_url must use https" in text and "subscription ids are integers" in text
    assert TOKEN not in text
    with pytest.raises(ValidationError):
        HubSpotSettings(name="hs", token=TOKEN, legal_basis_explanation="why")  # an explanation needs a basis


# -- writes: each mapping ---------------------------------------------------------------------------------


def test_global_opt_out_uses_v4_unsubscribe_all_and_is_held_per_address():
    fake, adapter, _ = hubspot()
    results = adapter.apply([OptOut("Nobody.Contact@example.com".lower())])
    assert outcomes(results) == [("nobody.contact@example.com", "*", APPLIED)]
    assert fake.opted_out_of_all("nobody.contact@example.com")
    call = fake.calls(BATCH_WIDE)[0]
    assert call.params == {"channel": "EMAIL", "businessUnitId": "0", "verbose": "true"}
    assert call.body == {"inputs": ["nobody.contact@example.com"]}
    assert_never_subscribed_or_created(fake)


def test_topic_opt_out_writes_unsubscribed_with_the_legal_basis():
    fake, adapter, _ = hubspot()
    results = adapter.apply([OptOut("a@example.com", "newsletter")])
    assert outcomes(results) == [("a@example.com", "newsletter", APPLIED)]
    assert fake.status_of("a@example.com", 101) == "UNSUBSCRIBED"
    assert fake.status_of("a@example.com", 102) == "NOT_SPECIFIED"  # only the mapped subscription
    assert fake.prefs["a@example.com"].subs[101]["legalBasis"] == "LEGITIMATE_INTEREST_OTHER"
    assert fake.calls(BATCH_WRITE)[0].body == {"inputs": [{
        "subscriberIdString": "a@example.com", "channel": "EMAIL", "statusState": "UNSUBSCRIBED",
        "subscriptionId": 101, "legalBasis": "LEGITIMATE_INTEREST_OTHER",
        "legalBasisExplanation": "Recipient asked elsewhere"}]}
    assert_never_subscribed_or_created(fake)


def test_bounce_and_spam_opt_outs_are_written_as_unsubscribe_from_all():
    fake, adapter, _ = hubspot()
    batch = [OptOut("b@example.com", reason="hard_bounce", origin="system"),
             OptOut("s@example.com", reason="spam_complaint", origin="system")]
    assert [r.outcome for r in adapter.apply(batch)] == [APPLIED, APPLIED]
    assert fake.opted_out_of_all("b@example.com") and fake.opted_out_of_all("s@example.com")


def test_brand_instance_writes_to_its_business_unit_only():
    fake, adapter, _ = hubspot(business_unit_id=7, topics={"brand_b": "701"})
    results = adapter.apply([OptOut("a@example.com"), OptOut("a@example.com", "brand_b")])
    assert [r.outcome for r in results] == [APPLIED, ALREADY]  # all of brand B already covers its topic
    assert fake.opted_out_of_all("a@example.com", business_unit=7)
    assert not fake.opted_out_of_all("a@example.com", business_unit=0)
    assert fake.status_of("a@example.com", 701) == "UNSUBSCRIBED"
    assert fake.status_of("a@example.com", 101) == "NOT_SPECIFIED"
    assert fake.calls(BATCH_WIDE)[0].params["businessUnitId"] == "7"


def test_brand_instance_check_lists_its_own_subscription_types():
    fake, adapter, _ = hubspot(business_unit_id=7, topics={"brand_b": "701"})
    lines = adapter.check()
    assert lines[0] == "business unit 7: 1 subscription types"
    assert "topic brand_b -> subscription 701 (Brand B newsletter)" in lines
    assert not any("UNMAPPED" in line for line in lines)


def test_repeating_a_write_is_a_success_without_a_second_effect():
    fake, adapter, _ = hubspot()
    batch = [OptOut("a@example.com"), OptOut("b@example.com", "newsletter")]
    assert [r.outcome for r in adapter.apply(batch)] == [APPLIED, APPLIED]
    changes = len(fake.timeline)
    again = adapter.apply(batch)
    assert [r.outcome for r in again] == [ALREADY, ALREADY]
    assert all("NO_STATUS_CHANGE" in r.message for r in again)
    assert len(fake.timeline) == changes  # HubSpot recorded no new change


def test_an_address_with_no_contact_is_opted_out_without_creating_one():
    fake, adapter, _ = hubspot()
    fake.add_contact("known@example.com")
    adapter.apply([OptOut("known@example.com"), OptOut("stranger@example.com", "product")])
    assert fake.contacts["1001"]["properties"]["hs_email_optout"] == "true"
    assert fake.status_of("stranger@example.com", 102) == "UNSUBSCRIBED"
    assert_never_subscribed_or_created(fake, contacts_before=1)


# -- batches: partial failure, scopes, limits ----------------------------------------------------------------


def test_partial_batch_failure_fails_only_the_bad_address():
    fake = FakeHubSpot(TOKEN, invalid_addresses={"bad@example.com"})
    fake, adapter, _ = hubspot(fake)
    batch = [OptOut("good1@example.com"), OptOut("bad@example.com"), OptOut("good2@example.com"),
             OptOut("bad@example.com", "newsletter"), OptOut("good3@example.com", "newsletter")]
    results = adapter.apply(batch)
    assert [r.outcome for r in results] == [APPLIED, PERMANENT, APPLIED, PERMANENT, APPLIED]
    assert 207 in fake.statuses
    assert "bad@example.com" in results[1].message and "VALIDATION_ERROR" in results[1].message
    assert fake.opted_out_of_all("good1@example.com") and fake.opted_out_of_all("good2@example.com")
    assert fake.status_of("good3@example.com", 101) == "UNSUBSCRIBED"
    assert not fake.opted_out_of_all("bad@example.com")


def test_without_batch_scopes_a_403_switches_to_single_calls_once():
    fake = FakeHubSpot(TOKEN, scopes=ALL_SCOPES - {"communication_preferences.statuses.batch.write"})
    fake, adapter, _ = hubspot(fake)
    first = adapter.apply([OptOut("a@example.com"), OptOut("b@example.com", "newsletter")])
    second = adapter.apply([OptOut("c@example.com"), OptOut("a@example.com")])
    assert [r.outcome for r in first + second] == [APPLIED, APPLIED, APPLIED, ALREADY]
    assert len(fake.calls("/statuses/batch/")) == 1  # detected once, from the first 403
    assert len(fake.calls("/unsubscribe-all", "POST")) == 4  # 1 refused batch + 3 single calls
    assert fake.opted_out_of_all("c@example.com") and fake.status_of("b@example.com", 101) == "UNSUBSCRIBED"


def test_a_400_naming_a_limit_halves_the_batch_size_and_keeps_it():
    fake = FakeHubSpot(TOKEN, batch_limit=30)
    fake, adapter, _ = hubspot(fake)
    batch = [OptOut(f"user{i:03d}@example.com") for i in range(100)]
    assert all(r.outcome == APPLIED for r in adapter.apply(batch))
    assert [len(c.body["inputs"]) for c in fake.calls(BATCH_WIDE)] == [100, 50, 25, 25, 25, 25]
    adapter.apply([OptOut(f"more{i:03d}@example.com") for i in range(30)])
    assert [len(c.body["inputs"]) for c in fake.calls(BATCH_WIDE)][6:] == [25, 5]
    assert all(fake.opted_out_of_all(f"user{i:03d}@example.com") for i in range(100))


def test_a_whole_batch_refused_without_naming_a_limit_is_retried_one_by_one():
    fake, adapter, _ = hubspot()
    fake.fail(400, path=BATCH_WRITE, message="Invalid input JSON", category="VALIDATION_ERROR")
    results = adapter.apply([OptOut("a@example.com", "newsletter"), OptOut("b@example.com", "product")])
    assert [r.outcome for r in results] == [APPLIED, APPLIED]
    assert len(fake.calls("/statuses/a@example.com", "POST")) == 1
    assert fake.status_of("b@example.com", 102) == "UNSUBSCRIBED"


def test_an_unmapped_topic_is_refused_for_that_item_only():
    fake, adapter, _ = hubspot()
    results = adapter.apply([OptOut("a@example.com", "brand_b"), OptOut("b@example.com")])
    assert [r.outcome for r in results] == [PERMANENT, APPLIED]
    assert "no HubSpot subscription id" in results[0].message


# -- failures: rate limits, 5xx, budget, credentials, shapes --------------------------------------------------


def test_429_is_waited_out_and_everything_lands():
    fake = FakeHubSpot(TOKEN, rate_limit=3, rate_headers=False, retry_after="4")
    fake, adapter, clock = hubspot(fake, batch_endpoints=False, retry_budget="2m")
    results = adapter.apply([OptOut(f"u{i}@example.com") for i in range(8)])
    assert all(r.outcome == APPLIED for r in results)
    assert 429 in fake.statuses
    assert all(fake.opted_out_of_all(f"u{i}@example.com") for i in range(8))
    assert 4.0 in clock.sleeps  # HubSpot's Retry-After was honoured


def test_hubspot_rate_headers_pace_the_client_before_any_429():
    fake = FakeHubSpot(TOKEN, rate_limit=3)
    fake, adapter, clock = hubspot(fake, batch_endpoints=False)
    adapter.apply([OptOut(f"u{i}@example.com") for i in range(8)])
    assert 429 not in fake.statuses
    assert sum(clock.sleeps) >= 20  # two holds of the 10-second window


TEN_SECONDLY_BODY = {"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
                     "errorType": "RATE_LIMIT", "correlationId": "c033cdaa-2c40-4a64-ae48-b4cec88dad24",
                     "policyName": "TEN_SECONDLY_ROLLING", "requestId": "3d3e35b7-0dae-4b9f-a6e3-9c230cbcf8dd"}
SECONDLY_BODY = {**TEN_SECONDLY_BODY, "message": "You have reached your secondly limit.", "policyName": "SECONDLY"}


def test_a_full_ten_second_window_is_waited_out_whole_not_retried_each_second():
    fake = FakeHubSpot(TOKEN, rate_limit=2, rate_headers=False)  # a 429 body only, as the usage guidelines show
    fake, adapter, clock = hubspot(fake, batch_endpoints=False)
    results = adapter.apply([OptOut(f"u{i}@example.com") for i in range(3)])
    assert [r.outcome for r in results] == [APPLIED] * 3
    assert clock.sleeps == [10.0]  # one wait of the rolling window, not five 1-second tries
    assert len(fake.calls("/unsubscribe-all")) == 4 and fake.statuses.count(429) == 1


def test_a_full_search_second_is_waited_out_for_one_second():
    fake = FakeHubSpot(TOKEN, search_rate_limit=1)
    fake, adapter, clock = hubspot(fake, search_in_values=1)
    for address in ("a@example.com", "b@example.com"):
        fake.add_contact(address)
    found = adapter.find_contact_ids(["a@example.com", "b@example.com"])
    assert set(found) == {"a@example.com", "b@example.com"}
    assert clock.sleeps == [1.0] and len(fake.calls("/contacts/search")) == 3 and fake.statuses.count(429) == 1


@pytest.mark.parametrize("body, headers, waits", [
    (TEN_SECONDLY_BODY, {}, [10.0, 10.0]),
    ({k: v for k, v in TEN_SECONDLY_BODY.items() if k != "policyName"}, {}, [10.0, 10.0]),  # message only
    (TEN_SECONDLY_BODY, {"Retry-After": "3"}, [3.0, 3.0]),  # HubSpot's own wait wins
    (TEN_SECONDLY_BODY, {"X-HubSpot-RateLimit-Interval-Milliseconds": "5000"}, [5.0, 5.0]),
    (SECONDLY_BODY, {}, [1.0, 1.0]),
    ({k: v for k, v in SECONDLY_BODY.items() if k != "policyName"}, {}, [1.0, 1.0]),
])
def test_each_kind_of_429_body_gets_the_wait_its_limit_needs(body, headers, waits):
    fake, adapter, clock = hubspot(batch_endpoints=False)
    fake.fail(429, times=2, path="/unsubscribe-all", body=body, headers=headers)
    assert [r.outcome for r in adapter.apply([OptOut("a@example.com")])] == [APPLIED]
    assert clock.sleeps == waits and len(fake.calls("/unsubscribe-all")) == 3
    assert fake.opted_out_of_all("a@example.com")


def test_a_daily_limit_body_is_not_retried_in_this_cycle():
    fake, adapter, clock = hubspot(batch_endpoints=False)
    fake.fail(429, times=5, path="/unsubscribe-all",
              body={**TEN_SECONDLY_BODY, "message": "You have reached your daily limit.", "policyName": "DAILY"})
    with pytest.raises(TransientError):
        adapter.apply([OptOut("a@example.com")])
    assert clock.sleeps == [] and len(fake.calls("/unsubscribe-all")) == 1


def test_5xx_is_retried_and_recovers():
    fake, adapter, _ = hubspot()
    fake.fail(503, times=2, path=BATCH_WIDE)
    assert [r.outcome for r in adapter.apply([OptOut("a@example.com")])] == [APPLIED]
    assert len(fake.calls(BATCH_WIDE)) == 3 and fake.opted_out_of_all("a@example.com")


def test_a_batch_that_cannot_be_sent_within_the_budget_raises_transient():
    fake, adapter, clock = hubspot(retry_budget="5s")
    fake.fail(503, times=100, path=BATCH_WIDE, headers={"Retry-After": "3"})
    with pytest.raises(TransientError) as caught:
        adapter.apply([OptOut("a@example.com"), OptOut("b@example.com")])
    assert "retry budget" in str(caught.value)
    assert sum(clock.sleeps) <= 5 and not fake.opted_out_of_all("a@example.com")


def test_budget_spent_part_way_through_single_calls_parks_the_rest():
    fake, adapter, _ = hubspot(batch_endpoints=False, retry_budget="5s")
    fake.fail(503, times=100, path="/statuses/c@example.com", headers={"Retry-After": "3"})
    results = adapter.apply([OptOut(f"{x}@example.com") for x in "abcde"])
    assert [r.outcome for r in results] == [APPLIED, APPLIED, TRANSIENT, TRANSIENT, TRANSIENT]
    assert "parked for the next cycle" in results[3].message
    assert not fake.calls("/statuses/d@example.com")  # nothing more was tried this cycle


def test_a_daily_limit_parks_at_once():
    fake = FakeHubSpot(TOKEN, daily_limit=0)
    fake, adapter, clock = hubspot(fake)
    with pytest.raises(TransientError) as caught:
        adapter.apply([OptOut("a@example.com")])
    assert "daily limit" in str(caught.value) and clock.sleeps == [] and len(fake.requests) == 1


def test_bad_credentials_are_an_adapter_error_and_never_leak_the_token():
    fake = FakeHubSpot("another-token")
    fake, adapter, _ = hubspot(fake)
    with pytest.raises(PermanentError) as caught:
        adapter.apply([OptOut("a@example.com")])
    text = str(caught.value)
    assert "401" in text and "INVALID_AUTHENTICATION" in text and TOKEN not in text
    assert len(fake.requests) == 1  # a 401 is never retried
    assert TOKEN not in repr(adapter) and TOKEN not in repr(adapter.settings) and TOKEN not in repr(adapter.http)


def test_a_vendor_message_echoing_the_token_is_scrubbed():
    fake, adapter, _ = hubspot()
    fake.fail(400, path=BATCH_WIDE, message=f"Bearer {TOKEN} is malformed", category="VALIDATION_ERROR")
    fake.fail(400, path="/unsubscribe-all", message=f"Bearer {TOKEN} is malformed", category="VALIDATION_ERROR")
    results = adapter.apply([OptOut("a@example.com")])
    assert results[0].outcome == PERMANENT and TOKEN not in results[0].message and "***" in results[0].message


@pytest.mark.parametrize("body", [{"unexpected": True}, "<html>Bad gateway</html>",
                                  {"status": "COMPLETE", "results": [{"statuses": []}]}])
def test_an_answer_of_the_wrong_shape_is_a_clear_adapter_error(body):
    fake, adapter, _ = hubspot()
    fake.fail(200, path=BATCH_WIDE, body=body)
    with pytest.raises(UnexpectedAnswer) as caught:
        adapter.apply([OptOut("a@example.com")])
    text = str(caught.value)
    assert text.startswith(f"hubspot: POST {BATCH_WIDE}") and ("not JSON" in text or "unexpected shape" in text)
    assert isinstance(caught.value, PermanentError)


def test_a_timeline_of_the_wrong_shape_is_a_clear_adapter_error():
    fake, adapter, _ = hubspot()
    fake.fail(200, path="/timeline", body={"hasMore": False, "timeline": [{"recipient": "a@example.com"}]})
    with pytest.raises(UnexpectedAnswer) as caught:
        list(adapter.read_changes(None))
    assert "GET /email/public/v1/subscriptions/timeline" in str(caught.value)
    assert "timestamp" in str(caught.value)


# -- reading: each mapping -------------------------------------------------------------------------------------


def _ms_iso(ms: int) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="microseconds")


def test_timeline_changes_map_to_opt_outs_notices_and_listed_problems():
    fake, adapter, clock = hubspot()
    at = fake.now_ms() - 60_000
    fake.recipient_unsubscribes_all("all@example.com", at=at)
    fake.recipient_unsubscribes("topic@example.com", 101, at=at + 1)
    fake.recipient_unsubscribes("unmapped@example.com", 103, at=at + 2)
    fake.bounce("bounced@example.com", at=at + 3)
    fake.spam_report("spam@example.com", at=at + 4)
    fake.recipient_unsubscribes_all("byuser@example.com", at=at + 5, source="SOURCE_HUBSPOT_CUSTOMER")
    fake.recipient_unsubscribes_all("mystery@example.com", at=at + 6, source="SOURCE_SOMETHING_NEW")
    fake.recipient_subscribes("back@example.com", 101, at=at + 7)
    pages = list(adapter.read_changes(None))
    optouts = {(o.address, o.scope): o for p in pages for o in p.optouts}
    assert {k: (o.reason, o.origin) for k, o in optouts.items()} == {
        ("all@example.com", "*"): ("unsubscribed", "recipient"),
        ("topic@example.com", "newsletter"): ("unsubscribed", "recipient"),
        ("bounced@example.com", "*"): ("hard_bounce", "system"),
        ("spam@example.com", "*"): ("spam_complaint", "system"),
        ("byuser@example.com", "*"): ("manual", "user"),
        ("mystery@example.com", "*"): ("unsubscribed", "recipient"),  # unknown source: the most binding
    }
    assert optouts[("all@example.com", "*")].occurred_at == "2023-11-14T22:12:20.000000+00:00"
    assert [n for p in pages for n in p.notices] == []
    # A change back to subscribed is a re-subscribe with who made it (the timeline's source) and its evidence.
    resubscribes = [r for p in pages for r in p.resubscribes]
    assert [(r.address, r.scope, r.by) for r in resubscribes] == [("back@example.com", "newsletter", "recipient")]
    assert resubscribes[0].occurred_at == _ms_iso(at + 7)
    evidence = resubscribes[0].evidence
    assert evidence["hubspot_source"] == "SOURCE_RECIPIENT" and evidence["hubspot_subscription_id"] == "101"
    assert evidence["hubspot_change_type"] == "SUBSCRIPTION_STATUS" and evidence["hubspot_event_id"]
    rejected = [r for p in pages for r in p.rejected]
    assert len(rejected) == 1 and "subscription 103" in rejected[0].reason
    assert pages[-1].cursor == str(fake.now_ms())


def test_a_brand_wide_opt_out_of_another_business_unit_is_history_only():
    fake, adapter, _ = hubspot()
    fake.recipient_unsubscribes_all("a@example.com", at=fake.now_ms() - 10, business_unit=7)
    pages = list(adapter.read_changes(None))
    assert [o for p in pages for o in p.optouts] == []
    assert [n.address for p in pages for n in p.notices] == ["a@example.com"]


def test_timeline_pages_are_followed_with_offsets():
    fake, adapter, _ = hubspot(timeline_page_size=2, initial_lookback="1h")
    for i in range(5):
        fake.recipient_unsubscribes_all(f"u{i}@example.com", at=fake.now_ms() - 100 + i)
    pages = list(adapter.read_changes(None))
    assert sorted(o.address for p in pages for o in p.optouts) == [f"u{i}@example.com" for i in range(5)]
    calls = fake.calls("/timeline")
    assert len(calls) == 3 and "offset" not in calls[0].params and calls[1].params["offset"]
    # The cursor is saved only with the window's last page, so a crash re-reads the whole window.
    assert [p.cursor for p in pages] == [None, None, str(fake.now_ms())]


def test_cursor_overlap_catches_late_changes_without_duplicate_history():
    fake, adapter, clock = hubspot(overlap="5m")
    fake.recipient_unsubscribes_all("early@example.com", at=fake.now_ms() - 1000)
    fake.recipient_subscribes("back@example.com", 101, at=fake.now_ms() - 900)
    first = list(adapter.read_changes(None))
    cursor = first[-1].cursor
    clock.advance(60)
    # A change dated before the cursor shows up late (HubSpot's lag): the overlap catches it.
    fake.recipient_unsubscribes_all("late@example.com", at=int(cursor) - 30_000)
    fake.recipient_unsubscribes_all("new@example.com")
    second = list(adapter.read_changes(cursor))
    assert {o.address for p in second for o in p.optouts} == {"early@example.com", "late@example.com",
                                                               "new@example.com"}
    assert [r for p in second for r in p.resubscribes] == []  # the re-subscribe was read last time
    assert int(second[-1].cursor) > int(cursor)
    assert fake.calls("/timeline")[-1].params["startTimestamp"] == str(int(cursor) - 300_000)


def test_overlap_reads_have_no_duplicate_effects_in_the_store(tmp_path):
    fake, adapter, clock = hubspot()
    fake.recipient_unsubscribes_all("a@example.com", at=fake.now_ms() - 1000)
    fake.recipient_unsubscribes("b@example.com", 101, at=fake.now_ms() - 950)
    fake.recipient_subscribes("b@example.com", 101, at=fake.now_ms() - 900)
    with Store(tmp_path / "store.db") as store:
        for _ in range(3):
            cursor = store.checkpoint("hubspot").read_cursor
            for page in adapter.read_changes(cursor):
                store.ingest_page("hubspot", page)
            store.promote("hubspot")
            clock.advance(5)
        kinds = [r[0] for r in store.conn.execute("SELECT kind FROM events ORDER BY seq")]
        # b's re-subscribe is read with its opt-out, before that is promoted, and recorded once.
        assert kinds == ["resubscribed", "suppressed", "suppressed"]
        assert store.count_suppressions() == 2


def test_first_read_of_an_empty_portal_is_one_timeline_call():
    fake, adapter, _ = hubspot()  # the default 30-day look-back
    pages = list(adapter.read_changes(None))
    calls = fake.calls("/timeline")
    assert len(calls) == 1  # not one call per day of the look-back
    assert calls[0].params["startTimestamp"] == str(fake.now_ms() - 30 * 86_400_000)
    assert calls[0].params["endTimestamp"] == str(fake.now_ms())
    assert [p.optouts for p in pages] == [[]] and pages[-1].cursor == str(fake.now_ms())


def test_first_read_pages_through_the_look_back_with_the_timelines_offset():
    fake, adapter, _ = hubspot(timeline_page_size=3)
    day = 86_400_000
    addresses = [f"u{i}@example.com" for i in range(8)]
    for i, address in enumerate(addresses):  # spread over the look-back, one outside it
        fake.recipient_unsubscribes_all(address, at=fake.now_ms() - (i * 4 + 3) * day)
    pages = list(adapter.read_changes(None))
    read = [o.address for p in pages for o in p.optouts]
    assert sorted(read) == sorted(addresses[:-1])  # u7 is 31 days old
    calls = fake.calls("/timeline")
    assert len(calls) == 3  # 7 changes in pages of 3, following hasMore/offset
    assert "offset" not in calls[0].params and calls[1].params["offset"] and calls[2].params["offset"]
    assert {c.params["startTimestamp"] for c in calls} == {str(fake.now_ms() - 30 * day)}
    # The cursor moves only with the last page, so a crash part-way re-reads the look-back.
    assert [p.cursor for p in pages] == [None, None, str(fake.now_ms())]


def test_timeline_window_still_splits_a_long_read_when_set():
    fake, adapter, _ = hubspot(initial_lookback="3d", timeline_window="1d")
    fake.recipient_unsubscribes_all("old@example.com", at=fake.now_ms() - 5 * 86_400_000)
    fake.recipient_unsubscribes_all("recent@example.com", at=fake.now_ms() - 2 * 86_400_000)
    pages = list(adapter.read_changes(None))
    assert [o.address for p in pages for o in p.optouts] == ["recent@example.com"]
    assert len(fake.calls("/timeline")) == 4  # 3 days and the last millisecond, oldest window first
    assert int(fake.calls("/timeline")[0].params["startTimestamp"]) == fake.now_ms() - 3 * 86_400_000


def test_full_read_reports_what_hubspot_holds_now():
    fake, adapter, _ = hubspot()
    at = fake.now_ms() - 10_000
    fake.recipient_unsubscribes_all("still@example.com", at=at)
    fake.recipient_unsubscribes("topic@example.com", 101, at=at + 1)
    fake.recipient_unsubscribes("undone@example.com", 101, at=at + 2)
    fake.recipient_subscribes("undone@example.com", 101, at=at + 3)
    fake.bounce("bounced@example.com", at=at + 4)
    held = {(o.address, o.scope) for p in adapter.read_all() for o in p.optouts}
    assert held == {("still@example.com", "*"), ("topic@example.com", "newsletter"), ("bounced@example.com", "*")}
    assert fake.calls("/statuses/batch/unsubscribe-all/read") and fake.calls("/statuses/batch/read")


def test_full_read_without_batch_read_scope_reports_the_timeline_unconfirmed():
    fake = FakeHubSpot(TOKEN, scopes=ALL_SCOPES - {"communication_preferences.statuses.batch.read"})
    fake, adapter, _ = hubspot(fake)
    fake.recipient_unsubscribes("undone@example.com", 101, at=fake.now_ms() - 10)
    fake.recipient_subscribes("undone@example.com", 101, at=fake.now_ms() - 5)
    held = {(o.address, o.scope) for p in adapter.read_all() for o in p.optouts}
    assert held == {("undone@example.com", "newsletter")}


# -- remove (the audited lift), check, contacts ---------------------------------------------------------------


def test_remove_clears_a_topic_without_subscribing_and_refuses_all_email():
    fake, adapter, _ = hubspot()
    adapter.apply([OptOut("a@example.com", "newsletter"), OptOut("b@example.com")])
    results = adapter.remove([OptOut("a@example.com", "newsletter"), OptOut("b@example.com")])
    assert [r.outcome for r in results] == [APPLIED, PERMANENT]
    assert fake.status_of("a@example.com", 101) == "NOT_SPECIFIED"
    assert fake.opted_out_of_all("b@example.com")
    assert "no way to undo" in results[1].message
    assert_never_subscribed_or_created(fake)


def test_check_lists_definitions_flags_unmapped_and_probes_batch_scopes():
    fake = FakeHubSpot(TOKEN, scopes=ALL_SCOPES - {"communication_preferences.statuses.batch.read"})
    fake, adapter, _ = hubspot(fake)
    lines = adapter.check()
    assert lines[0] == "business unit 0: 3 subscription types"
    assert "topic newsletter -> subscription 101 (Newsletter)" in lines
    assert any(line.startswith("UNMAPPED: subscription 103 (Events)") for line in lines)
    assert lines[-1].startswith("batch endpoints: not allowed")
    assert not [r for r in fake.requests if r.method != "GET" and "read" not in r.path]  # changed nothing


def test_check_fails_on_a_topic_mapped_to_a_missing_subscription():
    fake, adapter, _ = hubspot(topics={"newsletter": "999"})
    with pytest.raises(ConfigError) as caught:
        adapter.check()
    assert "subscription 999" in str(caught.value)


def test_contact_lookup_follows_search_paging_on_the_search_bucket():
    fake, adapter, clock = hubspot(search_page_size=100, search_in_values=300)
    ids = {fake.add_contact(f"c{i:03d}@example.com"): f"c{i:03d}@example.com" for i in range(250)}
    found = adapter.find_contact_ids([f"c{i:03d}@example.com" for i in range(250)] + ["none@example.com"])
    assert {a: i for i, a in ids.items()} == {a: v[0] for a, v in found.items()}
    searches = fake.calls("/contacts/search")
    assert [c.body.get("after") for c in searches] == [None, "100", "200"]
    assert sum(clock.sleeps) == pytest.approx(0.0)  # 3 searches fit the 4-per-second bucket


def _clean_up_lookup(**settings):
    """A clean-up's contact lookup of 300 addresses, 10 per search, over a network whose delay varies 0-200 ms."""
    jitter = random.Random(13)
    fake = FakeHubSpot(TOKEN, search_rate_limit=4, latency=lambda n: jitter.uniform(0.0, 0.2))
    fake, adapter, clock = hubspot(fake, search_in_values=10, **settings)
    addresses = [f"c{i:03d}@example.com" for i in range(300)]
    for address in addresses:
        fake.add_contact(address)
    found = adapter.find_contact_ids(addresses)
    assert sorted(found) == addresses
    return fake


def test_a_clean_up_of_many_searches_meets_no_429_despite_network_jitter():
    fake = _clean_up_lookup()
    assert len(fake.calls("/contacts/search")) == 30 and 429 not in fake.statuses


def test_searches_paced_at_exactly_four_a_second_arrive_in_full_windows():
    # The fake counts searches when they arrive: the old pacing, measured when sent, meets 429s.
    fake = _clean_up_lookup(search_rate_limit_period="1s")
    assert fake.statuses.count(429) > 0


def test_archive_contacts_in_batches_halving_on_a_limit():
    fake = FakeHubSpot(TOKEN, batch_limit=40)
    fake, adapter, _ = hubspot(fake)
    ids = [fake.add_contact(f"c{i}@example.com") for i in range(100)]
    results = adapter.archive_contacts(ids)
    assert all(r.ok for r in results) and [r.contact_id for r in results] == ids
    assert all(fake.contacts[i]["archived"] for i in ids)
    assert [len(c.body["inputs"]) for c in fake.calls("/batch/archive")] == [100, 50, 25, 25, 25, 25]


# -- through the engine, with a real store ----------------------------------------------------------------------


def test_items_flow_both_ways_through_the_engine_and_the_watermark_follows(tmp_path, memory_world):
    settings, store, _, built = memory_world([{"name": "inbox", "role": "both"}], topics=TOPICS)
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS, "adapters": [
        {"name": "inbox", "type": "memory", "interval": 1},
        {"name": "hubspot", "type": "hubspot", "token": TOKEN, "topics": {"newsletter": "101"}}]},
        tmp_path / "settings.toml")
    fake, adapter, clock = hubspot()
    engine = Engine(settings, store, {"inbox": built["inbox"], "hubspot": adapter})
    built["inbox"].opt_out(OptOut("from-inbox@example.com", reason="imported", origin="user"))
    built["inbox"].opt_out(OptOut("topic@example.com", "newsletter", reason="imported", origin="user"))
    fake.recipient_unsubscribes_all("from-hubspot@example.com", at=fake.now_ms() - 1000)
    reports = engine.sync_once()
    assert all(r.error is None for r in reports), [r.error for r in reports]
    assert fake.opted_out_of_all("from-inbox@example.com")
    assert fake.status_of("topic@example.com", 101) == "UNSUBSCRIBED"
    assert ("from-hubspot@example.com", "*") in built["inbox"].held
    max_seq = store.conn.execute("SELECT max(seq) FROM events WHERE kind = 'suppressed'").fetchone()[0]
    assert store.checkpoint("hubspot").applied_seq == max_seq
    # Our own writes come back on the timeline: no echo, no duplicate effect.
    changes, events = len(fake.timeline), store.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    clock.advance(5)
    assert all(r.error is None for r in engine.sync_once())
    assert len(fake.timeline) == changes
    assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == events
    assert store.suppression("from-inbox@example.com")["reason"] == "imported"


def test_a_parked_batch_holds_the_watermark_until_it_lands(tmp_path, memory_world):
    settings, store, _, built = memory_world([{"name": "inbox", "role": "read"}], topics=TOPICS)
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS, "adapters": [
        {"name": "inbox", "type": "memory", "role": "read"},
        {"name": "hubspot", "type": "hubspot", "role": "write", "token": TOKEN}]}, tmp_path / "settings.toml")
    fake, adapter, clock = hubspot(retry_budget="5s")
    engine = Engine(settings, store, {"inbox": built["inbox"], "hubspot": adapter})
    built["inbox"].opt_out(OptOut("a@example.com", reason="imported", origin="user"))
    engine.pull("inbox", CycleReport("inbox"))
    fake.fail(503, times=100, headers={"Retry-After": "3"})
    report = engine.cycle("hubspot")
    assert isinstance(report.error, TransientError) and report.parked == 1
    assert store.checkpoint("hubspot").applied_seq == 0
    assert [f["kind"] for f in store.failures("hubspot")] == [TRANSIENT]
    fake.faults.clear()
    report = engine.cycle("hubspot")
    assert report.error is None and report.pushed == 1 and fake.opted_out_of_all("a@example.com")
    assert store.checkpoint("hubspot").applied_seq == 1 and list(store.failures("hubspot")) == []


def test_bad_credentials_keep_every_item_pending(tmp_path, memory_world):
    settings, store, _, built = memory_world([{"name": "inbox", "role": "read"}], topics=TOPICS)
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS, "adapters": [
        {"name": "inbox", "type": "memory", "role": "read"},
        {"name": "hubspot", "type": "hubspot", "role": "write", "token": TOKEN}]}, tmp_path / "settings.toml")
    fake, adapter, _ = hubspot(FakeHubSpot("the-real-token"))
    engine = Engine(settings, store, {"inbox": built["inbox"], "hubspot": adapter})
    built["inbox"].opt_out(OptOut("a@example.com", reason="imported", origin="user"))
    engine.pull("inbox", CycleReport("inbox"))
    report = engine.cycle("hubspot")
    assert isinstance(report.error, PermanentError) and "401" in str(report.error)
    assert store.checkpoint("hubspot").applied_seq == 0 and list(store.failures("hubspot")) == []
    assert store.conn.execute("SELECT count(*) FROM events WHERE kind = 'failed'").fetchone()[0] == 0


def test_reconcile_reapplies_what_hubspot_lost_and_ingests_what_the_cursor_missed(tmp_path, memory_world):
    settings, store, _, built = memory_world([{"name": "inbox", "role": "read"}], topics=TOPICS)
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS, "adapters": [
        {"name": "inbox", "type": "memory", "role": "read"},
        {"name": "hubspot", "type": "hubspot", "token": TOKEN, "initial_lookback": "1d"}]},
        tmp_path / "settings.toml")
    fake, adapter, clock = hubspot(initial_lookback="1d")
    engine = Engine(settings, store, {"inbox": built["inbox"], "hubspot": adapter})
    built["inbox"].opt_out(OptOut("lost@example.com", reason="imported", origin="user"))
    # Older than the first read's look-back: only a full read finds it.
    fake.recipient_unsubscribes_all("old@example.com", at=fake.now_ms() - 40 * 86_400_000)
    assert all(r.error is None for r in engine.sync_once())
    assert store.suppression("old@example.com") is None and fake.opted_out_of_all("lost@example.com")
    del fake.prefs["lost@example.com"]  # drift: HubSpot lost the preference (its timeline still shows it)
    report = engine.reconcile("hubspot")
    assert report.error is None, report.error
    assert report.missing_at_source == 1 and report.pushed == 1
    assert fake.opted_out_of_all("lost@example.com")
    assert store.suppression("old@example.com")["origin"] == "recipient"


# -- what the adapter remembers across processes (its memory, kept in the store by the engine) -------------


NO_BATCH_WRITE = ALL_SCOPES - {"communication_preferences.statuses.batch.write"}


def _push_world(tmp_path, memory_world):
    settings, store, _, built = memory_world([{"name": "inbox", "role": "read"}], topics=TOPICS)
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS, "adapters": [
        {"name": "inbox", "type": "memory", "role": "read"},
        {"name": "hubspot", "type": "hubspot", "role": "write", "token": TOKEN}]}, tmp_path / "settings.toml")
    return settings, store, built["inbox"]


def _process(settings, store, inbox, fake, clock):
    """A new daemon process: a fresh adapter (and engine) on the same store and the same HubSpot account."""
    _, adapter, _ = hubspot(fake, clock)
    return adapter, Engine(settings, store, {"inbox": inbox, "hubspot": adapter})


def _push(engine, inbox, *addresses):
    for address in addresses:
        inbox.opt_out(OptOut(address, reason="imported", origin="user"))
    engine.pull("inbox", CycleReport("inbox"))
    report = engine.cycle("hubspot")
    assert report.error is None, report.error
    return report


def test_a_refused_batch_call_is_remembered_so_a_new_process_sends_none(tmp_path, memory_world):
    settings, store, inbox = _push_world(tmp_path, memory_world)
    clock = FakeClock()
    fake = FakeHubSpot(TOKEN, scopes=NO_BATCH_WRITE, clock=clock)
    _, engine = _process(settings, store, inbox, fake, clock)
    _push(engine, inbox, "a@example.com")
    assert [r.path for r in fake.requests] == [BATCH_WIDE, "/communication-preferences/v4/statuses/a@example.com/"
                                               "unsubscribe-all"]  # one 403, then the single call
    assert store.adapter_memory("hubspot") == {"batch_write_refused_at": str(int(clock.now))}
    fake.requests.clear()
    clock.advance(3600)
    _, engine = _process(settings, store, inbox, fake, clock)
    report = _push(engine, inbox, "b@example.com", "c@example.com")
    assert report.pushed == 2 and fake.opted_out_of_all("b@example.com") and fake.opted_out_of_all("c@example.com")
    assert not fake.calls("/statuses/batch/") and 403 not in fake.statuses[-2:]
    assert len(fake.requests) == 2  # the two single calls, nothing more


def test_a_remembered_refusal_is_asked_again_after_a_day(tmp_path, memory_world):
    settings, store, inbox = _push_world(tmp_path, memory_world)
    clock = FakeClock()
    fake = FakeHubSpot(TOKEN, scopes=NO_BATCH_WRITE, clock=clock)
    _push(_process(settings, store, inbox, fake, clock)[1], inbox, "a@example.com")
    clock.advance(86_400)
    fake.scopes = set(ALL_SCOPES)  # the account was upgraded meanwhile
    fake.requests.clear()
    _push(_process(settings, store, inbox, fake, clock)[1], inbox, "b@example.com", "c@example.com")
    assert [len(r.body["inputs"]) for r in fake.requests] == [2]  # one batch call again
    assert store.adapter_memory("hubspot") == {}


def test_a_single_call_refused_too_drops_the_remembered_answer(tmp_path, memory_world):
    settings, store, inbox = _push_world(tmp_path, memory_world)
    clock = FakeClock()
    fake = FakeHubSpot(TOKEN, scopes=NO_BATCH_WRITE, clock=clock)
    _push(_process(settings, store, inbox, fake, clock)[1], inbox, "a@example.com")
    assert store.adapter_memory("hubspot")
    # The token's scopes changed: even the single call is refused now. What was learnt about the
    # old scopes no longer holds, so the next process asks the batch endpoint again.
    fake.scopes = {"content"}
    inbox.opt_out(OptOut("b@example.com", reason="imported", origin="user"))
    engine = _process(settings, store, inbox, fake, clock)[1]
    engine.pull("inbox", CycleReport("inbox"))
    report = engine.cycle("hubspot")
    assert isinstance(report.error, PermanentError) and "403" in str(report.error)
    assert store.adapter_memory("hubspot") == {}
    fake.scopes = set(ALL_SCOPES)
    fake.requests.clear()
    engine = _process(settings, store, inbox, fake, clock)[1]
    assert engine.cycle("hubspot").error is None
    assert [r.path for r in fake.requests] == [BATCH_WIDE] and fake.opted_out_of_all("b@example.com")


def test_a_refused_batch_read_is_remembered_for_the_next_reconcile(tmp_path, memory_world):
    settings, store, inbox = _push_world(tmp_path, memory_world)
    clock = FakeClock()
    fake = FakeHubSpot(TOKEN, scopes=ALL_SCOPES - {"communication_preferences.statuses.batch.read"}, clock=clock)
    fake.recipient_unsubscribes_all("r@example.com", at=fake.now_ms() - 1000)
    assert _process(settings, store, inbox, fake, clock)[1].reconcile("hubspot").error is None
    assert len(fake.calls("/statuses/batch/unsubscribe-all/read")) == 1
    fake.requests.clear()
    assert _process(settings, store, inbox, fake, clock)[1].reconcile("hubspot").error is None
    assert not fake.calls("/statuses/batch/") and fake.calls("/timeline")


def test_a_dry_run_does_not_save_what_the_adapter_learnt(tmp_path, memory_world):
    settings, store, inbox = _push_world(tmp_path, memory_world)
    clock = FakeClock()
    fake = FakeHubSpot(TOKEN, scopes=ALL_SCOPES - {"communication_preferences.statuses.batch.read"}, clock=clock)
    fake.recipient_unsubscribes_all("r@example.com", at=fake.now_ms() - 1000)
    adapter, engine = _process(settings, store, inbox, fake, clock)
    assert engine.reconcile("hubspot", dry_run=True).error is None
    assert adapter.memory.get("batch_read_refused_at") and store.adapter_memory("hubspot") == {}
