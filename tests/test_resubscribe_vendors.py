"""Re-subscribes at real vendor adapters (against their fakes): HubSpot and Mailchimp say who made one,
so a recipient's is released there and an admin's is drift, re-applied; SendGrid cannot say, so a
re-subscribe there stays drift. No vendor is ever sent a subscribe."""

from __future__ import annotations

import httpx

from adapters import registry
from adapters.hubspot import HubSpotAdapter
from adapters.mailchimp import MailchimpAdapter
from adapters.sendgrid import SendGridAdapter
from connector.engine import Engine
from connector.settings import validate_settings
from state import resubscribes
from state.models import OptOut
from state.store import Store

from .fakes.clock import FakeClock
from .fakes.hubspot import FakeHubSpot
from .fakes.mailchimp import FakeMailchimp
from .fakes.sendgrid import FakeSendGrid

X = "x@example.com"
OPTED_OUT = "2023-01-01T00:00:00+00:00"  # before the fakes' clocks (November 2023)
HS_TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"
MC_KEY = "0123456789abcdef0123456789abcdef-us21"
SG_KEY = "SG.aaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"


def world(tmp_path, name, vendor, build):
    raw = {"store": {"path": str(tmp_path / "store.db")}, "topics": {"newsletter": "The newsletter"},
           "adapters": [{"name": "inbox", "type": "memory", "interval": 1}, {"name": name, **vendor}]}
    settings = validate_settings(raw, tmp_path / "settings.toml")
    store = Store(settings.store.path)
    inbox = registry.build(settings.adapter("inbox"), settings.topics)
    inbox.opt_out(OptOut(X, "*", "unsubscribed", "recipient", OPTED_OUT))
    engine = Engine(settings, store, {"inbox": inbox, name: build(settings.adapter(name), settings.topics)})
    assert all(r.error is None for r in engine.sync_once())
    return engine, store


def ok(engine, name):
    """A cycle, then a reconcile (the daemon's order), then a cycle."""
    assert all(r.error is None for r in engine.sync_once())
    assert engine.reconcile(name).error is None
    assert all(r.error is None for r in engine.sync_once())


def hubspot(tmp_path):
    clock = FakeClock()
    fake = FakeHubSpot(HS_TOKEN, clock=clock)
    engine, store = world(tmp_path, "hubspot", {"type": "hubspot", "token": HS_TOKEN},
                          lambda s, t: HubSpotAdapter(s, t, transport=httpx.MockTransport(fake.handle), clock=clock))
    assert fake._prefs(X).wide  # our unsubscribe-all
    return engine, store, fake, clock


def unsubscribe_all_writes(fake) -> int:
    return len([c for c in fake.calls("unsubscribe-all") if "read" not in c.path])


def no_subscribe_sent_to_hubspot(fake) -> None:
    bodies = [c.body for c in fake.calls("/statuses/") if isinstance(c.body, dict)]
    assert bodies and not [b for b in bodies if b.get("statusState") == "SUBSCRIBED"
                           or any(isinstance(i, dict) and i.get("statusState") == "SUBSCRIBED"
                                  for i in b.get("inputs", []))]


def test_hubspot_a_recipients_resubscribe_is_released_there(tmp_path):
    engine, store, fake, clock = hubspot(tmp_path)
    writes = unsubscribe_all_writes(fake)
    clock.advance(60)
    fake.recipient_subscribes(X)  # all email, SOURCE_RECIPIENT
    clock.advance(60)
    ok(engine, "hubspot")
    assert resubscribes.releases_of(store, X, "*") == ["hubspot"]
    event = next(e for e in store.events_for(X) if e["kind"] == "resubscribed")
    assert event["source"] == "hubspot" and '"hubspot_source":"SOURCE_RECIPIENT"' in event["details"]
    assert unsubscribe_all_writes(fake) == writes and not fake._prefs(X).wide  # not re-applied
    no_subscribe_sent_to_hubspot(fake)


def test_hubspot_an_admins_resubscribe_is_drift_and_re_applied(tmp_path):
    engine, store, fake, clock = hubspot(tmp_path)
    writes = unsubscribe_all_writes(fake)
    clock.advance(60)
    fake.admin_subscribes(X)  # SOURCE_HUBSPOT_CUSTOMER
    clock.advance(60)
    ok(engine, "hubspot")
    assert resubscribes.releases_of(store, X, "*") == []
    observed = next(e for e in store.events_for(X) if e["kind"] == "observed")
    assert "made by admin, not by the recipient" in observed["message"]
    assert unsubscribe_all_writes(fake) == writes + 1 and fake._prefs(X).wide  # re-applied by reconcile
    no_subscribe_sent_to_hubspot(fake)


def mailchimp(tmp_path):
    clock = FakeClock()
    fake = FakeMailchimp(MC_KEY, clock=clock)
    fake.add_member(X, "subscribed", at=1_600_000_000)  # signed up in 2020, before the opt-out
    vendor = {"type": "mailchimp", "api_key": MC_KEY, "list_id": "a1b2c3d4e5",
              "base_url": "https://us21.api.mailchimp.test/3.0"}
    engine, store = world(tmp_path, "mailchimp", vendor, lambda s, t: MailchimpAdapter(
        s, t, transport=httpx.MockTransport(fake.handle), clock=clock))
    assert fake.status_of(X) == "unsubscribed"
    return engine, store, fake, clock


def test_mailchimp_a_members_own_confirmed_resubscribe_is_released_there(tmp_path):
    engine, store, fake, clock = mailchimp(tmp_path)
    clock.advance(60)
    fake.recipient_resubscribes(X)
    clock.advance(60)
    ok(engine, "mailchimp")
    assert resubscribes.releases_of(store, X, "*") == ["mailchimp"]
    assert fake.status_of(X) == "subscribed"
    details = next(e for e in store.events_for(X) if e["kind"] == "resubscribed")["details"]
    assert '"ip_opt_recorded":true' in details and "203.0.113.7" not in details  # the IP is not kept
    assert fake.subscribe_writes == []


def test_mailchimp_a_resubscribe_without_the_persons_confirmation_is_drift(tmp_path):
    engine, store, fake, clock = mailchimp(tmp_path)
    clock.advance(60)
    fake.admin_resubscribes(X)
    clock.advance(60)
    ok(engine, "mailchimp")
    assert resubscribes.releases_of(store, X, "*") == []
    assert "made by unknown, not by the recipient" in next(
        e for e in store.events_for(X) if e["kind"] == "observed")["message"]
    assert fake.status_of(X) == "unsubscribed"  # re-applied by reconcile
    assert fake.subscribe_writes == []


def test_sendgrid_cannot_say_who_resubscribed_so_it_stays_drift(tmp_path):
    clock = FakeClock()
    fake = FakeSendGrid(SG_KEY, clock=clock)
    engine, store = world(tmp_path, "sendgrid", {"type": "sendgrid", "api_key": SG_KEY},
                          lambda s, t: SendGridAdapter(s, t, transport=httpx.MockTransport(fake.handle), clock=clock))
    assert X in fake.globally_suppressed()
    for resubscribe in (fake.recipient_resubscribes, fake.admin_resubscribes):
        clock.advance(60)
        resubscribe(X)  # off the global list; nothing in SendGrid's API says by whom
        clock.advance(60)
        ok(engine, "sendgrid")
        assert X in fake.globally_suppressed()  # re-applied, as before
    assert resubscribes.release_counts(store) == {}
    assert [e["kind"] for e in store.events_for(X)].count("observed") == 0


def test_hubspot_a_reconcile_before_the_next_pull_reads_the_resubscribe_first(tmp_path):
    engine, store, fake, clock = hubspot(tmp_path)
    writes = unsubscribe_all_writes(fake)
    clock.advance(60)
    fake.recipient_subscribes(X)
    clock.advance(60)
    report = engine.reconcile("hubspot")  # the full read carries the timeline's re-subscribe too
    assert report.error is None and report.released == 1 and report.missing_at_source == 0
    assert unsubscribe_all_writes(fake) == writes and not fake._prefs(X).wide


def test_hubspot_a_timeline_page_holding_only_a_resubscribe_is_read():
    # Newest first, one item a page: the re-subscribe is alone on a page that is not the last.
    clock = FakeClock()
    fake = FakeHubSpot(HS_TOKEN, clock=clock)
    fake.recipient_unsubscribes_all(X, at=fake.now_ms() - 2000)
    fake.recipient_subscribes(X, at=fake.now_ms() - 1000)
    config = HubSpotAdapter.settings_model.model_validate({"name": "hubspot", "token": HS_TOKEN,
                                                           "timeline_page_size": 1})
    adapter = HubSpotAdapter(config, {}, transport=httpx.MockTransport(fake.handle), clock=clock)
    pages = list(adapter.read_changes(None))
    assert len(fake.calls("/timeline")) == 2
    assert [(r.address, r.scope, r.by) for p in pages for r in p.resubscribes] == [(X, "*", "recipient")]
    assert [(o.address, o.scope) for p in pages for o in p.optouts] == [(X, "*")]


def test_mailchimp_an_old_confirmation_does_not_make_an_admins_resubscribe_the_recipients():
    # The member confirmed a sign-up in 2020, unsubscribed, and a user set it back to subscribed:
    # Mailchimp keeps the old timestamp_opt but records no opt-in IP for the admin's change.
    clock = FakeClock()
    fake = FakeMailchimp(MC_KEY, clock=clock)
    fake.recipient_resubscribes(X, at=1_600_000_000)
    fake.recipient_unsubscribes(X, at=clock() - 600)
    fake.admin_resubscribes(X, at=clock() - 300)
    config = MailchimpAdapter.settings_model(**{"name": "mailchimp", "api_key": MC_KEY, "list_id": "a1b2c3d4e5",
                                                "base_url": "https://us21.api.mailchimp.test/3.0"})
    adapter = MailchimpAdapter(config, {}, transport=httpx.MockTransport(fake.handle), clock=clock)
    found = [r for p in adapter.read_changes(None) for r in p.resubscribes]
    assert [(r.address, r.by) for r in found] == [(X, "unknown")]
    assert found[0].occurred_at == fake.stamp(clock() - 300).replace("+00:00", ".000000+00:00")
    assert found[0].evidence["ip_opt_recorded"] is False
