"""The `mailchimp` adapter against a stateful Mailchimp fake: mapping, paging, windows, member-only writes, errors.

Every test talks HTTP through httpx.MockTransport to tests/fakes/mailchimp.py, with
a pretend clock shared by adapter and fake, so waits are exact and nothing sleeps.
"""

from __future__ import annotations

import hashlib

import httpx
import pytest

from adapters import registry
from adapters.mailchimp import MailchimpAdapter, MailchimpSettings, subscriber_hash
from connector.engine import Engine
from connector.settings import validate_settings
from state.errors import ConfigError, PermanentError, TransientError
from state.models import ALREADY, APPLIED, PERMANENT, OptOut
from state.store import Store

from .fakes.clock import FakeClock
from .fakes.mailchimp import FakeMailchimp

KEY = "0123456789abcdef0123456789abcdef-us21"
LIST = "a1b2c3d4e5"
NOW = 1_700_000_000
TOPICS = {"newsletter": "Newsletter"}


def make(fake: FakeMailchimp | None = None, clock: FakeClock | None = None, key: str = KEY,
         **settings) -> tuple[MailchimpAdapter, FakeMailchimp, FakeClock]:
    clock = clock or FakeClock(NOW)
    fake = fake or FakeMailchimp(KEY, clock=clock)
    config = MailchimpSettings(**{"name": "mailchimp", "api_key": key, "list_id": LIST,
                                  "base_url": "https://us21.api.mailchimp.test/3.0", "backoff_initial": 1,
                                  "backoff_max": 4, **settings})
    adapter = MailchimpAdapter(config, TOPICS, transport=httpx.MockTransport(fake.handle), clock=clock)
    return adapter, fake, clock


def read(pages) -> tuple[list[OptOut], list, list[str | None]]:
    optouts, rejected, cursors = [], [], []
    for page in pages:
        optouts += page.optouts
        rejected += page.rejected
        cursors.append(page.cursor)
    return optouts, rejected, cursors


# -- settings -----------------------------------------------------------------------------------------


def test_the_base_url_comes_from_the_keys_data_center_unless_given():
    config = MailchimpSettings(name="mc", api_key=KEY, list_id=LIST)
    assert config.base_url == "https://us21.api.mailchimp.com/3.0"
    with pytest.raises(ValueError, match="data-center suffix") as caught:
        MailchimpSettings(name="mc", api_key="nodatacenterkey", list_id=LIST)
    assert "nodatacenterkey" not in str(caught.value)
    with pytest.raises(ValueError, match="one adapter per audience"):
        MailchimpSettings(name="mc", api_key=KEY, list_id=LIST, topics={"newsletter": "x"})


def test_subscriber_hash_is_md5_of_the_lower_cased_address():
    assert subscriber_hash("Ann@Example.COM") == hashlib.md5(b"ann@example.com").hexdigest()


# -- mapping ----------------------------------------------------------------------------------------------


def test_unsubscribed_cleaned_and_abuse_reports_map_and_other_statuses_are_ignored():
    adapter, fake, _ = make()
    fake.add_member("sam@example.com", "subscribed", at=NOW - 100)
    fake.add_member("pat@example.com", "pending", at=NOW - 100)
    fake.add_member("arc@example.com", "archived", at=NOW - 100)
    fake.recipient_unsubscribes("Ann@Example.com", at=NOW - 90, reason="No longer interested")
    fake.clean("dora@example.com", at=NOW - 80)
    fake.abuse_report("gina@example.com", at=NOW - 70)

    optouts, rejected, cursors = read(adapter.read_changes(None))

    got = {(o.address, o.scope, o.reason, o.origin) for o in optouts}
    assert got == {
        ("ann@example.com", "*", "unsubscribed", "recipient"),
        ("dora@example.com", "*", "hard_bounce", "system"),
        ("gina@example.com", "*", "unsubscribed", "recipient"),       # the member, unsubscribed by the report
        ("gina@example.com", "*", "spam_complaint", "system"),        # the abuse report itself
    }
    ann = next(o for o in optouts if o.address == "ann@example.com")
    assert ann.details["unsubscribe_reason"] == "No longer interested"
    assert ann.occurred_at.startswith("2023-11-14T22:11:50")
    assert rejected == [] and cursors[-1] == "2023-11-14T22:13:20+00:00"


def test_an_audience_standing_for_a_topic_reads_unsubscribes_as_that_topic_but_bounces_as_all_email():
    adapter, fake, _ = make(scope="newsletter")
    fake.recipient_unsubscribes("ann@example.com", at=NOW - 90)
    fake.clean("dora@example.com", at=NOW - 80)

    optouts, _, _ = read(adapter.read_changes(None))

    assert {(o.address, o.scope) for o in optouts} == {("ann@example.com", "newsletter"), ("dora@example.com", "*")}
    assert adapter.capabilities.scopes == frozenset({"newsletter"})


def test_incremental_read_asks_for_the_window_oldest_change_first():
    adapter, fake, clock = make(overlap=600, read_abuse_reports=False)
    fake.recipient_unsubscribes("old@example.com", at=NOW - 5000)
    fake.recipient_unsubscribes("new@example.com", at=NOW - 100)

    optouts, _, cursors = read(adapter.read_changes("2023-11-14T21:56:40+00:00"))  # NOW - 1000

    assert [o.address for o in optouts] == ["new@example.com"]
    call = fake.calls("/members")[0]
    assert call.params["since_last_changed"] == "2023-11-14T21:46:40+00:00"  # cursor - overlap
    assert call.params["before_last_changed"] == "2023-11-14T22:13:20+00:00"
    assert (call.params["sort_field"], call.params["sort_dir"]) == ("last_changed", "ASC")
    # Then the members back to subscribed, for re-subscribes (issue 17).
    assert [c.params["status"] for c in fake.calls("/members")] == ["cleaned", "unsubscribed", "subscribed"]
    assert cursors[-1] == "2023-11-14T22:13:20+00:00"


def test_paging_walks_every_page_of_members():
    adapter, fake, _ = make(page_size=100, read_abuse_reports=False)
    for i in range(1234):
        fake.recipient_unsubscribes(f"user{i}@example.com", at=NOW - 5000 + i)

    pages = list(adapter.read_all())

    addresses = [o.address for p in pages for o in p.optouts]
    assert len(addresses) == 1234 and len(set(addresses)) == 1234
    offsets = [int(c.params["offset"]) for c in fake.calls("/members") if c.params["status"] == "unsubscribed"]
    assert offsets == list(range(0, 1300, 100))


# -- writing ----------------------------------------------------------------------------------------------


def test_apply_unsubscribes_members_only_and_creates_nobody_when_create_members_is_off():
    adapter, fake, _ = make()
    fake.add_member("sam@example.com", "subscribed")
    fake.add_member("pat@example.com", "pending")
    fake.add_member("una@example.com", "unsubscribed")
    fake.add_member("cle@example.com", "cleaned")
    fake.add_member("arc@example.com", "archived")
    batch = [OptOut(a) for a in ("sam@example.com", "pat@example.com", "una@example.com", "cle@example.com",
                                 "arc@example.com", "out@example.com")]

    results = adapter.apply(batch)

    # An archived member holds the opt-out (not mailed): never written, never a failure.
    assert [r.outcome for r in results] == [APPLIED, APPLIED, ALREADY, ALREADY, ALREADY, PERMANENT]
    assert "not a member" in results[5].message and "create_members is off" in results[5].message
    assert "archived" in results[4].message
    assert fake.status_of("sam@example.com") == "unsubscribed" and fake.status_of("pat@example.com") == \
        "unsubscribed"
    assert fake.status_of("out@example.com") is None and fake.status_of("arc@example.com") == "archived"
    assert fake.created_by_api == [] and fake.subscribe_writes == []
    sent = [m["email_address"] for c in fake.calls(f"/lists/{LIST}", "POST") for m in c.body["members"]]
    assert sorted(sent) == ["pat@example.com", "sam@example.com"]
    assert all(m["status"] == "unsubscribed" for c in fake.calls(method="POST") for m in c.body["members"])

    again = adapter.apply(batch[:2])
    assert [r.outcome for r in again] == [ALREADY, ALREADY]


def test_create_members_creates_non_members_as_unsubscribed():
    adapter, fake, _ = make(create_members=True)
    fake.add_member("sam@example.com", "subscribed")

    results = adapter.apply([OptOut("sam@example.com"), OptOut("out@example.com")])

    assert [r.outcome for r in results] == [APPLIED, APPLIED]
    assert "create_members" in results[1].message
    assert fake.status_of("out@example.com") == "unsubscribed"
    assert fake.created_by_api == ["out@example.com"] and fake.subscribe_writes == []


def test_scopes_other_than_the_audiences_are_refused():
    adapter, fake, _ = make(scope="newsletter")
    fake.add_member("sam@example.com")

    results = adapter.apply([OptOut("sam@example.com", scope="newsletter"), OptOut("sam@example.com"),
                             OptOut("sam@example.com", scope="events")])

    assert [r.outcome for r in results] == [APPLIED, APPLIED, PERMANENT]
    assert [len(c.body["members"]) for c in fake.calls(f"/lists/{LIST}", "POST")] == [1]


def test_one_refused_address_fails_alone_in_a_batch_answer():
    adapter, fake, _ = make()
    for address in ("a@example.com", "b@example.com", "c@example.com"):
        fake.add_member(address)
    fake.invalid_addresses.add("b@example.com")

    results = adapter.apply([OptOut("a@example.com"), OptOut("b@example.com"), OptOut("c@example.com")])

    assert [r.outcome for r in results] == [APPLIED, PERMANENT, APPLIED]
    assert "ERROR_GENERIC" in results[1].message and "looks fake or invalid" in results[1].message
    assert fake.status_of("a@example.com") == fake.status_of("c@example.com") == "unsubscribed"
    assert fake.status_of("b@example.com") == "subscribed"


def test_a_batch_over_mailchimps_limit_is_halved():
    clock = FakeClock(NOW)
    fake = FakeMailchimp(KEY, batch_limit=4, clock=clock)
    adapter, fake, _ = make(fake, clock, batch_size=10)
    addresses = [f"user{i}@example.com" for i in range(10)]
    for address in addresses:
        fake.add_member(address)

    results = adapter.apply([OptOut(a) for a in addresses])

    assert all(r.outcome == APPLIED for r in results)
    assert all(fake.status_of(a) == "unsubscribed" for a in addresses)
    assert [len(c.body["members"]) for c in fake.calls(f"/lists/{LIST}", "POST")] == [10, 5, 2, 2, 2, 2, 2]


def test_remove_refuses_since_only_a_resubscribe_could_undo_it():
    adapter, fake, _ = make()
    fake.add_member("una@example.com", "unsubscribed")

    results = adapter.remove([OptOut("una@example.com")])

    assert results[0].outcome == PERMANENT and "consent" in results[0].message
    assert fake.requests == [] and fake.status_of("una@example.com") == "unsubscribed"


# -- errors and the shared policy -------------------------------------------------------------------------


def test_429_and_5xx_are_retried_by_the_shared_policy():
    adapter, fake, clock = make()
    fake.add_member("sam@example.com")
    fake.fail(429, times=2, path="/members/")
    fake.fail(503, times=1, method="POST")

    results = adapter.apply([OptOut("sam@example.com")])

    assert results[0].outcome == APPLIED and fake.status_of("sam@example.com") == "unsubscribed"
    assert fake.statuses.count(429) == 2 and fake.statuses.count(503) == 1
    assert len(clock.sleeps) == 3


def test_a_vendor_that_stays_down_parks_the_batch_as_transient():
    adapter, fake, _ = make(max_attempts=2, retry_budget=3)
    fake.add_member("sam@example.com")
    fake.fail(500, times=1000)

    with pytest.raises(TransientError):
        adapter.apply([OptOut("sam@example.com")])
    assert fake.status_of("sam@example.com") == "subscribed"


def test_a_wrong_key_gives_mailchimps_problem_detail_and_the_key_never_shows():
    wrong = "ffffffffffffffffffffffffffffffff-us21"
    adapter, fake, _ = make(key=wrong)

    with pytest.raises(PermanentError) as caught:
        list(adapter.read_changes(None))

    text = str(caught.value)
    assert "401" in text and "API Key Invalid" in text
    for shown in (text, repr(adapter), repr(adapter.settings), repr(adapter.http)):
        assert "ffffffffffffffff" not in shown and KEY not in shown


def test_check_pings_lists_audiences_and_refuses_an_unknown_one():
    adapter, fake, _ = make()
    fake.add_member("sam@example.com")
    lines = adapter.check()
    assert lines[0] == "API reachable: Everything's Chimpy!"
    assert f"audience {LIST} (Customers): 1 subscribed, 0 unsubscribed <- this adapter (scope *)" in lines
    assert all(c.method == "GET" for c in fake.requests)

    other, _, _ = make(list_id="zzz999")
    with pytest.raises(ConfigError, match="zzz999"):
        other.check()


# -- through the engine, with a real store ----------------------------------------------------------------


@pytest.fixture
def world(tmp_path):
    clock = FakeClock(NOW)
    fake = FakeMailchimp(KEY, clock=clock)
    raw = {"store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS,
           "adapters": [{"name": "mem", "type": "memory", "interval": 1},
                        {"name": "mailchimp", "type": "mailchimp", "api_key": KEY, "list_id": LIST,
                         "base_url": "https://us21.api.mailchimp.test/3.0"}]}
    settings = validate_settings(raw, tmp_path / "settings.toml")
    store = Store(settings.store.path)
    mem = registry.build(settings.adapter("mem"), settings.topics)
    mailchimp = MailchimpAdapter(settings.adapter("mailchimp"), settings.topics,
                                 transport=httpx.MockTransport(fake.handle), clock=clock)
    yield Engine(settings, store, {"mem": mem, "mailchimp": mailchimp}), store, fake, mem, clock
    store.close()


def test_engine_spreads_both_ways_non_members_are_listed_and_the_overlap_has_no_second_effect(world):
    engine, store, fake, mem, clock = world
    fake.add_member("sam@example.com")
    fake.recipient_unsubscribes("ann@example.com", at=NOW - 30)
    fake.abuse_report("gina@example.com", at=NOW - 20)
    mem.opt_out(OptOut("sam@example.com", reason="imported", origin="user"))
    mem.opt_out(OptOut("out@example.com", reason="imported", origin="user"))

    assert all(r.error is None for r in engine.sync_once())

    assert {("ann@example.com", "*"), ("gina@example.com", "*")} <= set(mem.held)
    assert fake.status_of("sam@example.com") == "unsubscribed"
    assert fake.status_of("out@example.com") is None and fake.created_by_api == []
    failures = list(store.failures("mailchimp"))
    assert [(f["address"], "not a member" in f["message"]) for f in failures] == [("out@example.com", True)]
    gina = store.suppression("gina@example.com")
    assert (gina["reason"], gina["origin"]) == ("spam_complaint", "system")

    clock.advance(120)
    fake.clean("dora@example.com", at=NOW + 100)
    assert all(r.error is None for r in engine.sync_once())

    assert ("dora@example.com", "*") in mem.held
    assert [e["kind"] for e in store.events_for("ann@example.com")] == ["suppressed", "applied"]
    assert mem.effects[("ann@example.com", "*")] == 1
    assert store.checkpoint("mailchimp").read_cursor == "2023-11-14T22:15:20+00:00"
    assert fake.subscribe_writes == [] and fake.deletes == []


def test_archived_members_are_never_written_again_even_with_create_members(tmp_path):
    """Archived (as docs/adapters.md advises, to stop paying for them): reconcile leaves them archived."""
    clock = FakeClock(NOW)
    fake = FakeMailchimp(KEY, clock=clock)
    raw = {"store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS,
           "adapters": [{"name": "mem", "type": "memory", "interval": 1},
                        {"name": "mailchimp", "type": "mailchimp", "api_key": KEY, "list_id": LIST,
                         "base_url": "https://us21.api.mailchimp.test/3.0", "create_members": True}]}
    settings = validate_settings(raw, tmp_path / "settings.toml")
    store = Store(settings.store.path)
    mem = registry.build(settings.adapter("mem"), settings.topics)
    mailchimp = MailchimpAdapter(settings.adapter("mailchimp"), settings.topics,
                                 transport=httpx.MockTransport(fake.handle), clock=clock)
    engine = Engine(settings, store, {"mem": mem, "mailchimp": mailchimp})
    try:
        for address in ("ann@example.com", "bob@example.com"):
            fake.add_member(address, "subscribed")
            mem.opt_out(OptOut(address, reason="imported", origin="user"))
        assert all(r.error is None for r in engine.sync_once())
        assert fake.status_of("ann@example.com") == fake.status_of("bob@example.com") == "unsubscribed"
        for address in ("ann@example.com", "bob@example.com"):  # the operator archives both
            fake.members[LIST][subscriber_hash(address)]["status"] = "archived"
        writes_before = len(fake.calls(f"/lists/{LIST}", "POST"))

        report = engine.reconcile("mailchimp")

        assert report.error is None and report.missing_at_source == 2
        assert fake.status_of("ann@example.com") == fake.status_of("bob@example.com") == "archived"
        assert len(fake.calls(f"/lists/{LIST}", "POST")) == writes_before  # no write reached them
        assert fake.calls(method="PATCH") == [] and fake.calls(method="PUT") == []
        assert list(store.failures("mailchimp")) == []  # held, not a failure
    finally:
        store.close()
