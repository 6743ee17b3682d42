"""Contract tests of the Mailgun adapter against the hand-written fake (tests/fakes/mailgun.py).

Each test asserts what the fake now holds or received, or what the store recorded.
"""

from __future__ import annotations

import json

import httpx
import pytest

from adapters import registry
from adapters.mailgun import MailgunAdapter, MailgunSettings, UnexpectedAnswer
from connector.engine import CycleReport, Engine
from connector.settings import validate_settings
from state.errors import ConfigError, PermanentError, TransientError
from state.models import ALREADY, APPLIED, PERMANENT, OptOut
from state.store import Store

from .fakes.clock import FakeClock
from .fakes.mailgun import FakeMailgun

KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
DOMAIN = "mg.example.com"
TOPICS = {"newsletter": "The newsletter", "product": "Product updates"}
BASE = "https://api.mailgun.net"


def mailgun(fake: FakeMailgun | None = None, clock: FakeClock | None = None, **settings):
    """A fake Mailgun and an adapter talking to it through MockTransport, on one pretend clock."""
    clock = clock or FakeClock()
    fake = fake or FakeMailgun(KEY, domains=(DOMAIN,), clock=clock)
    fake.clock = clock
    config = MailgunSettings.model_validate({
        "name": "mailgun", "api_key": KEY, "domain": DOMAIN, "topics": {"newsletter": "Newsletter"},
        "backoff_initial": 1, "backoff_max": 4, **settings})
    adapter = MailgunAdapter(config, TOPICS, transport=httpx.MockTransport(fake.handle), clock=clock)
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


def test_mailgun_is_a_registered_type_and_validates_from_settings(tmp_path):
    (tmp_path / "mailgun.key").write_text(KEY + "\n")
    settings = validate_settings({"topics": TOPICS, "adapters": [
        {"name": "mg", "type": "mailgun", "api_key_file": "mailgun.key", "domain": "MG.Example.com.",
         "base_url": "https://api.eu.mailgun.net", "topics": {"newsletter": "Newsletter"}}]},
        tmp_path / "settings.toml")
    config = settings.adapter("mg")
    assert registry.ADAPTER_TYPES["mailgun"] is MailgunAdapter
    assert config.api_key.get_secret_value() == KEY and config.domain == "mg.example.com"
    assert (config.batch_size, config.page_size) == (1000, 1000)
    assert MailgunSettings(name="x", api_key=KEY, domain=DOMAIN).base_url == BASE
    assert KEY not in repr(config) and KEY not in str(settings.model_dump())


def test_settings_refuse_a_bad_domain_star_tags_duplicate_tags_and_oversized_batches(tmp_path):
    with pytest.raises(ConfigError) as caught:
        validate_settings({"topics": TOPICS, "adapters": [
            {"name": "mg", "type": "mailgun", "api_key": KEY, "domain": "not a domain",
             "topics": {"newsletter": "*"}, "batch_size": 1001}]}, tmp_path / "settings.toml")
    text = str(caught.value)
    assert "sending domain" in text and "other than '*'" in text and "batch_size" in text
    assert KEY not in text
    with pytest.raises(ConfigError, match="same Mailgun tag"):
        validate_settings({"topics": TOPICS, "adapters": [
            {"name": "mg", "type": "mailgun", "api_key": KEY, "domain": DOMAIN,
             "topics": {"newsletter": "News", "product": "news"}}]}, tmp_path / "settings.toml")


# -- reading: each mapping -------------------------------------------------------------------------------


def test_each_list_maps_to_opt_outs_with_origin_reason_and_details():
    fake, adapter, clock = mailgun()
    at = clock.now - 3600
    fake.recipient_unsubscribes("All.Mail@example.com", ["*"], at=at)
    fake.recipient_unsubscribes("no-tags@example.com", [], at=at)
    fake.recipient_unsubscribes("news@example.com", ["newsletter"], at=at)  # tags are case-insensitive
    fake.recipient_unsubscribes("both@example.com", ["Newsletter", "*"], at=at)
    fake.bounce("gone@example.com", "550", "5.1.1 mailbox does not exist", at=at)
    fake.complaint("angry@example.com", at=at)
    optouts, rejected = read(adapter.read_all())
    got = {(o.address, o.scope): (o.reason, o.origin) for o in optouts}
    assert got == {
        ("all.mail@example.com", "*"): ("unsubscribed", "recipient"),
        ("no-tags@example.com", "*"): ("unsubscribed", "recipient"),
        ("news@example.com", "newsletter"): ("unsubscribed", "recipient"),
        ("both@example.com", "*"): ("unsubscribed", "recipient"),
        ("both@example.com", "newsletter"): ("unsubscribed", "recipient"),
        ("gone@example.com", "*"): ("hard_bounce", "system"),
        ("angry@example.com", "*"): ("spam_complaint", "system"),
    }
    bounce = next(o for o in optouts if o.address == "gone@example.com")
    assert bounce.details == {"mailgun_code": "550", "mailgun_error": "5.1.1 mailbox does not exist"}
    assert bounce.occurred_at.startswith("2023-11-14T21:13:20")
    assert rejected == []


def test_soft_bounces_are_not_opt_outs():
    fake, adapter, _ = mailgun()
    fake.bounce("full@example.com", "452", "4.2.2 mailbox full")
    fake.bounce("hard@example.com", "550")
    optouts, _ = read(adapter.read_all())
    assert [o.address for o in optouts] == ["hard@example.com"]


def test_unmapped_tags_and_invalid_addresses_are_listed_once_not_every_sweep():
    fake, adapter, clock = mailgun()
    fake.recipient_unsubscribes("promo@example.com", ["black-friday"], at=clock.now - 3600)
    fake.recipient_unsubscribes("not-an-address", ["*"], at=clock.now - 3600)
    cursor = None
    first = list(adapter.read_changes(cursor))
    optouts, rejected = read(first)
    assert optouts == []
    assert sorted(r.value for r in rejected) == ["not-an-address", "promo@example.com"]
    assert "black-friday" in next(r.reason for r in rejected if r.value == "promo@example.com")
    clock.advance(3600)
    second = list(adapter.read_changes(first[-1].cursor))
    assert read(second) == ([], [])
    fake.recipient_unsubscribes("later@example.com", ["black-friday"], at=clock.now)
    clock.advance(60)
    third = list(adapter.read_changes(second[-1].cursor))
    assert [r.value for r in read(third)[1]] == ["later@example.com"]


def test_full_read_follows_paging_next_across_many_pages():
    fake, adapter, _ = mailgun(page_size=100)
    for i in range(1050):
        fake.recipient_unsubscribes(f"u{i:04d}@example.com")
    for i in range(230):
        fake.bounce(f"b{i:04d}@example.com")
    pages = list(adapter.read_all())
    optouts, _ = read(pages)
    assert len(optouts) == 1280 and len({o.address for o in optouts}) == 1280
    listing = fake.calls("/unsubscribes", "GET")
    assert len(listing) == 12  # 11 pages of items and the empty page that ends the list
    assert listing[0].params == {"limit": "100"}
    assert listing[1].params == {"page": "next", "address": "u0099@example.com", "limit": "100"}
    assert len(fake.calls("/bounces", "GET")) == 4


def test_paging_next_on_another_host_is_followed_only_on_the_configured_host():
    fake, adapter, clock = mailgun(page_size=2)
    for i in range(5):
        fake.recipient_unsubscribes(f"u{i}@example.com")
    hosts = []

    def rewriting(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        response = fake.handle(request)
        body = json.loads(response.content)
        if "paging" in body:
            body["paging"]["next"] = body["paging"]["next"].replace(BASE, "https://collector.invalid")
        return httpx.Response(response.status_code, json=body)

    adapter = MailgunAdapter(adapter.settings, TOPICS, transport=httpx.MockTransport(rewriting), clock=clock)
    optouts, _ = read(adapter.read_all())
    assert len(optouts) == 5 and set(hosts) == {"api.mailgun.net"}


def test_incremental_reads_are_bounded_per_cycle_and_resume_where_they_stopped(tmp_path):
    fake, adapter, clock = mailgun(page_size=10, max_pages_per_cycle=3)
    for i in range(45):
        fake.recipient_unsubscribes(f"u{i:02d}@example.com", at=clock.now - 100)
    fake.complaint("c@example.com", at=clock.now - 100)
    store = Store(tmp_path / "store.db")
    requests_per_cycle, cursors, cursor = [], [], None
    for _ in range(4):
        before = len(fake.requests)
        for page in adapter.read_changes(cursor):
            store.ingest_page("mailgun", page)
        cursor = store.checkpoint("mailgun").read_cursor
        cursors.append(json.loads(cursor))
        requests_per_cycle.append(len(fake.requests) - before)
        clock.advance(60)
    # One sweep: 5 pages and an empty one of unsubscribes, an empty page of bounces, then a page
    # and an empty one of complaints: 9 requests in 3 cycles. The fourth cycle starts the next sweep.
    assert requests_per_cycle == [3, 3, 3, 3]
    assert (cursors[0]["list"], cursors[0]["next"]) == ("unsubscribes", {"page": "next", "address": "u29@example.com"})
    assert (cursors[2]["list"], cursors[2]["next"]) == ("unsubscribes", None)
    assert cursors[2]["listed_before"] == cursors[0]["started"]
    assert cursors[3]["next"] == {"page": "next", "address": "u29@example.com"}
    assert store.staged_count("mailgun") == 46
    store.close()


def test_repeated_sweeps_have_no_duplicate_effects_in_the_store(tmp_path):
    fake, adapter, clock = mailgun()
    fake.recipient_unsubscribes("a@example.com", ["*"], at=clock.now - 10)
    fake.bounce("b@example.com", at=clock.now - 10)
    store = Store(tmp_path / "store.db")
    for _ in range(3):
        for page in adapter.read_changes(store.checkpoint("mailgun").read_cursor):
            store.ingest_page("mailgun", page)
        store.promote("mailgun")
        clock.advance(60)
    assert store.count_suppressions() == 2
    assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    store.close()


# -- writing -------------------------------------------------------------------------------------------------


def test_global_and_topic_opt_outs_are_added_as_one_record_per_address():
    fake, adapter, _ = mailgun()
    batch = [OptOut("a@example.com", occurred_at="2024-05-01T10:00:00+00:00"),
             OptOut("a@example.com", "newsletter"),
             OptOut("t@example.com", "newsletter", reason="imported", origin="user")]
    assert outcomes(adapter.apply(batch)) == [("a@example.com", "*", APPLIED),
                                              ("a@example.com", "newsletter", APPLIED),
                                              ("t@example.com", "newsletter", APPLIED)]
    assert fake.tags_of("a@example.com") == ["*", "Newsletter"] and fake.tags_of("t@example.com") == ["Newsletter"]
    [call] = fake.calls("/unsubscribes", "POST")
    assert call.body == [
        {"address": "a@example.com", "tags": ["*", "Newsletter"], "created_at": "Wed, 01 May 2024 10:00:00 GMT"},
        {"address": "t@example.com", "tags": ["Newsletter"], "created_at": "Tue, 14 Nov 2023 22:13:20 GMT"}]


def test_repeating_a_write_is_a_success_without_a_second_effect():
    fake, adapter, _ = mailgun()
    fake.recipient_unsubscribes("a@example.com", ["*"])
    first = adapter.apply([OptOut("a@example.com"), OptOut("b@example.com", "newsletter")])
    again = adapter.apply([OptOut("a@example.com"), OptOut("b@example.com", "newsletter")])
    assert all(r.ok for r in first + again)
    assert fake.tags_of("a@example.com") == ["*"] and fake.tags_of("b@example.com") == ["Newsletter"]
    assert len(fake.domains[DOMAIN]["unsubscribes"]) == 2


def test_a_topic_write_never_takes_away_an_all_mail_unsubscribe():
    fake, adapter, _ = mailgun()
    fake.recipient_unsubscribes("a@example.com", ["*"])
    assert outcomes(adapter.apply([OptOut("a@example.com", "newsletter")])) == [
        ("a@example.com", "newsletter", APPLIED)]
    assert fake.tags_of("a@example.com") == ["*", "Newsletter"]


def test_batches_are_cut_at_the_batch_size_and_the_fake_refuses_more_than_1000():
    fake, adapter, _ = mailgun(batch_size=400)
    batch = [OptOut(f"u{i}@example.com") for i in range(1000)]
    assert all(r.outcome == APPLIED for r in adapter.apply(batch))
    assert [len(c.body) for c in fake.calls("/unsubscribes", "POST")] == [400, 400, 200]
    client = httpx.Client(transport=httpx.MockTransport(fake.handle), auth=("api", KEY))
    answer = client.post(f"{BASE}/v3/{DOMAIN}/unsubscribes",
                         json=[{"address": f"x{i}@example.com", "tags": ["*"]} for i in range(1001)])
    assert answer.status_code == 400 and "limit is 1000" in answer.json()["message"]


def test_a_refused_address_fails_alone_and_the_rest_lands():
    fake = FakeMailgun(KEY, domains=(DOMAIN,), refuse={"bad@example.com"})
    fake, adapter, _ = mailgun(fake)
    batch = [OptOut(f"u{i}@example.com") for i in range(7)]
    batch.insert(3, OptOut("bad@example.com"))
    results = adapter.apply(batch)
    assert [r.optout.address for r in results if r.outcome == PERMANENT] == ["bad@example.com"]
    failed = next(r for r in results if r.outcome == PERMANENT)
    assert "answered 400" in failed.message and "not a valid email address" in failed.message
    assert sorted(fake.domains[DOMAIN]["unsubscribes"]) == sorted(f"u{i}@example.com" for i in range(7))


def test_an_unmapped_topic_is_refused_for_that_item_only():
    fake, adapter, _ = mailgun()
    results = adapter.apply([OptOut("a@example.com", "product"), OptOut("b@example.com")])
    assert outcomes(results) == [("a@example.com", "product", PERMANENT), ("b@example.com", "*", APPLIED)]
    assert "no Mailgun tag" in results[0].message and fake.tags_of("a@example.com") == []


# -- the shared policy: 429, 5xx, budget, credentials ----------------------------------------------------------


def test_429_is_waited_out_and_everything_lands():
    fake, adapter, clock = mailgun()
    fake.fail(429, times=2, message="Too many requests", headers={"Retry-After": "3"})
    assert all(r.outcome == APPLIED for r in adapter.apply([OptOut("a@example.com")]))
    assert clock.sleeps == [3.0, 3.0] and fake.statuses == [429, 429, 200]
    assert fake.tags_of("a@example.com") == ["*"]


def test_5xx_is_retried_with_back_off_and_recovers_during_a_read():
    fake, adapter, clock = mailgun()
    fake.complaint("c@example.com")
    fake.fail(503, times=2, path="/complaints")
    optouts, _ = read(adapter.read_all())
    assert [o.address for o in optouts] == ["c@example.com"]
    assert len(clock.sleeps) == 2 and fake.statuses.count(503) == 2


def test_a_batch_that_cannot_be_sent_within_the_budget_raises_transient():
    fake, adapter, _ = mailgun(retry_budget="5s")
    fake.fail(500, times=100)
    with pytest.raises(TransientError):
        adapter.apply([OptOut("a@example.com"), OptOut("b@example.com")])
    assert fake.tags_of("a@example.com") == []


def test_bad_credentials_are_an_adapter_error_and_never_leak_the_key():
    fake, adapter, _ = mailgun(FakeMailgun("key-the-real-one", domains=(DOMAIN,)))
    with pytest.raises(PermanentError) as caught:
        adapter.apply([OptOut("a@example.com")])
    text = str(caught.value)
    assert "401" in text and "Forbidden" in text and KEY not in text
    assert KEY not in repr(adapter) and KEY not in repr(adapter.http) and KEY not in repr(adapter.settings)
    with pytest.raises(PermanentError):
        list(adapter.read_changes(None))


def test_a_vendor_message_echoing_the_key_is_scrubbed():
    fake, adapter, _ = mailgun()
    fake.fail(400, message=f"bad key {KEY} for domain")
    [result] = adapter.apply([OptOut("a@example.com")])
    assert result.outcome == PERMANENT and KEY not in result.message and "***" in result.message


def test_an_answer_of_the_wrong_shape_is_a_clear_adapter_error():
    fake, adapter, clock = mailgun()

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": "nope"})

    adapter = MailgunAdapter(adapter.settings, TOPICS, transport=httpx.MockTransport(broken), clock=clock)
    with pytest.raises(UnexpectedAnswer, match="unexpected shape"):
        list(adapter.read_all())


# -- lift and check ---------------------------------------------------------------------------------------------


def test_remove_takes_away_only_the_lifted_tag():
    fake, adapter, _ = mailgun()
    fake.recipient_unsubscribes("a@example.com", ["*", "Newsletter"])
    fake.recipient_unsubscribes("b@example.com", ["Newsletter"])
    results = adapter.remove([OptOut("a@example.com"), OptOut("b@example.com", "newsletter"),
                              OptOut("c@example.com")])
    assert outcomes(results) == [("a@example.com", "*", APPLIED), ("b@example.com", "newsletter", APPLIED),
                                 ("c@example.com", "*", ALREADY)]
    assert fake.tags_of("a@example.com") == ["Newsletter"] and fake.tags_of("b@example.com") == []
    assert [c.params for c in fake.calls("/unsubscribes/", "DELETE")] == [
        {"tag": "*"}, {"tag": "Newsletter"}, {"tag": "*"}]


def test_check_reads_the_domain_and_lists_tags_in_use():
    fake, adapter, _ = mailgun()
    fake.recipient_unsubscribes("a@example.com", ["newsletter"])
    fake.recipient_unsubscribes("b@example.com", ["Black-Friday", "*"])
    fake.recipient_unsubscribes("c@example.com", ["black-friday"])
    lines = adapter.check()
    assert lines[0] == f"domain {DOMAIN}: active"
    assert "topic newsletter -> tag 'Newsletter' (1 unsubscribes seen)" in lines
    assert "UNMAPPED: tag 'Black-Friday' (2 unsubscribes); not synced until a topic maps to it" in lines
    assert "bounces: readable" in lines and "complaints: readable" in lines
    assert not fake.calls(method="POST") and not fake.calls(method="DELETE")


def test_check_of_a_domain_the_key_cannot_see_is_an_error():
    fake, adapter, _ = mailgun(FakeMailgun(KEY, domains=("other.example.com",)))
    with pytest.raises(PermanentError, match="404"):
        adapter.check()


# -- through the engine, with a real store -----------------------------------------------------------------------


def test_opt_outs_flow_both_ways_through_the_engine(tmp_path, memory_world):
    _, store, _, built = memory_world([{"name": "inbox"}], topics=TOPICS)
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS, "adapters": [
        {"name": "inbox", "type": "memory", "interval": 1},
        {"name": "mailgun", "type": "mailgun", "api_key": KEY, "domain": DOMAIN,
         "topics": {"newsletter": "Newsletter"}}]}, tmp_path / "settings.toml")
    fake, adapter, clock = mailgun()
    engine = Engine(settings, store, {"inbox": built["inbox"], "mailgun": adapter})
    built["inbox"].opt_out(OptOut("from-inbox@example.com", reason="imported", origin="user"))
    built["inbox"].opt_out(OptOut("topic@example.com", "newsletter", reason="imported", origin="user"))
    fake.recipient_unsubscribes("unsub@example.com", at=clock.now - 30)
    fake.bounce("bounced@example.com", "550", "no such user", at=clock.now - 30)
    fake.complaint("spam@example.com", at=clock.now - 30)
    reports = engine.sync_once()
    assert all(r.error is None for r in reports), [r.error for r in reports]
    assert fake.tags_of("from-inbox@example.com") == ["*"] and fake.tags_of("topic@example.com") == ["Newsletter"]
    assert store.suppression("bounced@example.com")["reason"] == "hard_bounce"
    assert json.loads(store.suppression("bounced@example.com")["details"])["mailgun_code"] == "550"
    assert store.suppression("spam@example.com")["reason"] == "spam_complaint"
    assert store.suppression("unsub@example.com")["origin"] == "recipient"
    assert {a for (a, _) in built["inbox"].held} >= {"unsub@example.com", "bounced@example.com", "spam@example.com"}
    events = store.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    posts = len(fake.calls("/unsubscribes", "POST"))
    clock.advance(60)
    assert all(r.error is None for r in engine.sync_once())
    # Our own writes come back in the next sweep: no new suppression, no second write.
    assert store.conn.execute("SELECT count(*) FROM events WHERE kind = 'suppressed'").fetchone()[0] == 5
    assert len(fake.calls("/unsubscribes", "POST")) == posts
    assert store.suppression("from-inbox@example.com")["source"] == "inbox"
    assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] >= events


def test_a_parked_batch_holds_the_watermark_until_it_lands(tmp_path, memory_world):
    _, store, _, built = memory_world([{"name": "inbox", "role": "read"}], topics=TOPICS)
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS, "adapters": [
        {"name": "inbox", "type": "memory", "role": "read"},
        {"name": "mailgun", "type": "mailgun", "role": "write", "api_key": KEY, "domain": DOMAIN}]},
        tmp_path / "settings.toml")
    fake, adapter, _ = mailgun(retry_budget="5s")
    engine = Engine(settings, store, {"inbox": built["inbox"], "mailgun": adapter})
    built["inbox"].opt_out(OptOut("a@example.com", reason="imported", origin="user"))
    engine.pull("inbox", CycleReport("inbox"))
    fake.fail(503, times=100, headers={"Retry-After": "3"})
    report = engine.cycle("mailgun")
    assert isinstance(report.error, TransientError) and report.parked == 1
    assert store.checkpoint("mailgun").applied_seq == 0
    fake.faults.clear()
    report = engine.cycle("mailgun")
    assert report.error is None and report.pushed == 1 and fake.tags_of("a@example.com") == ["*"]
    assert store.checkpoint("mailgun").applied_seq == 1


def test_a_split_request_cut_short_parks_its_other_half_unsent():
    # A request refused whole is split; when its first half cannot be sent within the budget, the
    # second half was never sent either: it waits for the next cycle with its reason.
    fake, adapter, _ = mailgun(retry_budget="5s")
    fake.fail(400, method="POST", message="Invalid request")
    fake.fail(503, times=100)
    results = adapter.apply([OptOut("a@example.com"), OptOut("b@example.com"), OptOut("c@example.com", "product")])
    assert outcomes(results) == [("a@example.com", "*", "transient"), ("b@example.com", "*", "transient"),
                                 ("c@example.com", "product", PERMANENT)]
    assert "not sent: an earlier request of this batch" in results[1].message
    sent = [[r["address"] for r in c.body] for c in fake.calls("/unsubscribes", "POST")]
    assert all(addresses != ["b@example.com"] for addresses in sent) and fake.tags_of("b@example.com") == []
