"""An all-email opt-out written to a sink that spreads it over several places reads back as its echo.

Postmark suppresses every mapped stream, a Mailchimp audience standing for a topic holds it as
that topic, and HubSpot's unsubscribe-all sets every subscription type: each of those read back
must create nothing, change nothing, be pushed nowhere and not outlive a lift of the all-email
opt-out. Mailgun (one record tagged `*`) and SendGrid (the global list only) do not fan out;
their tests show that reading back our write creates nothing there either.
"""

from __future__ import annotations

import json

import httpx

from adapters import registry
from adapters.hubspot import HubSpotAdapter, HubSpotSettings
from adapters.mailchimp import MailchimpAdapter, MailchimpSettings
from adapters.mailgun import MailgunAdapter, MailgunSettings
from adapters.postmark import PostmarkAdapter, PostmarkSettings
from adapters.sendgrid import SendGridAdapter, SendGridSettings
from connector.engine import Engine
from connector.settings import validate_settings
from state.lifts import lift
from state.models import OptOut
from state.store import Store

from .fakes.clock import FakeClock
from .fakes.hubspot import API_SOURCE, FakeHubSpot
from .fakes.mailchimp import FakeMailchimp
from .fakes.mailgun import FakeMailgun
from .fakes.postmark import FakePostmark
from .fakes.sendgrid import FakeSendGrid

TOPICS = {"newsletter": "The newsletter", "product": "Product updates"}
X = "x@example.com"


def world(tmp_path, name: str, vendor: dict, build):
    """An engine with a memory inbox and one vendor adapter, built by `build(settings)` on a real store."""
    raw = {"store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS,
           "adapters": [{"name": "inbox", "type": "memory", "interval": 1}, {"name": name, **vendor}]}
    settings = validate_settings(raw, tmp_path / "settings.toml")
    store = Store(settings.store.path)
    inbox = registry.build(settings.adapter("inbox"), settings.topics)
    adapter = build(settings.adapter(name), settings.topics)
    return Engine(settings, store, {"inbox": inbox, name: adapter}), store, inbox


def rows(store: Store, address: str = X) -> list[tuple]:
    return [tuple(r) for r in store.conn.execute(
        "SELECT scope, reason, origin, source FROM suppressions WHERE address = ? ORDER BY scope", (address,))]


def kinds(store: Store, address: str = X) -> list[str]:
    return [e["kind"] for e in store.events_for(address)]


def read_back_creates_nothing(engine: Engine, store: Store, inbox, name: str) -> None:
    """Pull and reconcile the vendor; assert our write came back as an echo only."""
    before = kinds(store)
    assert all(r.error is None for r in engine.sync_once()), [r.error for r in engine.sync_once()]
    report = engine.reconcile(name)
    assert report.error is None and report.staged == 0
    assert all(r.error is None for r in engine.sync_once())
    assert rows(store) == [("*", "manual", "user", "inbox")]
    # No new suppression and no change. (A reconcile of a topic audience re-applies the all-email
    # opt-out, which the audience holds as the topic only: an `already held` apply, nothing more.)
    after = store.events_for(X)[len(before):]
    assert [(e["kind"], json.loads(e["details"])["outcome"]) for e in after] in ([], [("applied", "already")])
    assert set(inbox.held) == {(X, "*")}  # no topic opt-out reached the other systems


def lift_leaves_nothing(engine: Engine, store: Store, name: str) -> None:
    lift(store, X, "*", "consent", "asked for mail again", "test")
    assert all(r.error is None for r in engine.sync_once())
    assert engine.reconcile(name).error is None
    assert all(r.error is None for r in engine.sync_once())
    assert rows(store) == []
    assert kinds(store).count("suppressed") == 1


# -- Postmark: one all-email opt-out goes to every mapped stream -------------------------------------------


PM_TOKEN = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"


def test_postmark_topic_streams_read_back_as_the_echo_of_the_all_email_opt_out(tmp_path):
    clock = FakeClock()
    fake = FakePostmark(PM_TOKEN, streams={"outbound": "Transactional", "broadcast": "Broadcasts",
                                           "product": "Product"}, clock=clock)
    vendor = {"type": "postmark", "server_token": PM_TOKEN, "topics": {"newsletter": "broadcast",
                                                                       "product": "product"}}
    engine, store, inbox = world(tmp_path, "postmark", vendor, lambda s, t: PostmarkAdapter(
        s, t, transport=httpx.MockTransport(fake.handle), clock=clock))
    inbox.opt_out(OptOut(X, reason="manual", origin="user"))
    assert all(r.error is None for r in engine.sync_once())
    assert all(X in fake.held(stream) for stream in ("outbound", "broadcast", "product"))
    assert fake.held("broadcast")[X] == ("ManualSuppression", "Customer")

    clock.advance(60)
    read_back_creates_nothing(engine, store, inbox, "postmark")
    lift_leaves_nothing(engine, store, "postmark")


def test_postmark_a_recipients_own_topic_unsubscribe_is_still_news(tmp_path):
    """Only our write is an echo: the recipient's unsubscribe link in a topic stream binds more strongly."""
    clock = FakeClock()
    fake = FakePostmark(PM_TOKEN, clock=clock)
    vendor = {"type": "postmark", "server_token": PM_TOKEN, "topics": {"newsletter": "broadcast"}}
    engine, store, inbox = world(tmp_path, "postmark", vendor, lambda s, t: PostmarkAdapter(
        s, t, transport=httpx.MockTransport(fake.handle), clock=clock))
    inbox.opt_out(OptOut(X, reason="manual", origin="user"))
    assert all(r.error is None for r in engine.sync_once())
    fake.suppress(X, "broadcast", "ManualSuppression", "Recipient", at=clock.now - 3600)  # dated before our apply
    assert all(r.error is None for r in engine.sync_once())
    assert rows(store) == [("*", "manual", "user", "inbox"), ("newsletter", "unsubscribed", "recipient", "postmark")]


# -- Mailchimp: an audience that stands for a topic holds an all-email opt-out as that topic --------------------


MC_KEY = "0123456789abcdef0123456789abcdef-us21"


def test_mailchimp_topic_audience_reads_back_an_all_email_opt_out_as_its_echo(tmp_path):
    clock = FakeClock()
    fake = FakeMailchimp(MC_KEY, clock=clock)
    fake.add_member(X, "subscribed", at=clock.now - 100)
    vendor = {"type": "mailchimp", "api_key": MC_KEY, "list_id": "a1b2c3d4e5", "scope": "newsletter",
              "base_url": "https://us21.api.mailchimp.test/3.0"}
    engine, store, inbox = world(tmp_path, "mailchimp", vendor, lambda s, t: MailchimpAdapter(
        s, t, transport=httpx.MockTransport(fake.handle), clock=clock))
    inbox.opt_out(OptOut(X, reason="manual", origin="user"))
    assert all(r.error is None for r in engine.sync_once())
    assert fake.status_of(X) == "unsubscribed"

    clock.advance(60)
    read_back_creates_nothing(engine, store, inbox, "mailchimp")
    lift_leaves_nothing(engine, store, "mailchimp")


# -- HubSpot: unsubscribe-all also sets every subscription type ------------------------------------------------


HS_TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"


def hubspot_world(tmp_path):
    clock = FakeClock()
    fake = FakeHubSpot(HS_TOKEN, clock=clock)
    vendor = {"type": "hubspot", "token": HS_TOKEN, "topics": {"newsletter": "101", "product": "102"},
              "legal_basis": "LEGITIMATE_INTEREST_OTHER", "legal_basis_explanation": "Recipient asked elsewhere"}
    engine, store, inbox = world(tmp_path, "hubspot", vendor, lambda s, t: HubSpotAdapter(
        s, t, transport=httpx.MockTransport(fake.handle), clock=clock))
    return engine, store, inbox, fake, clock


def test_hubspot_unsubscribe_all_reads_back_as_its_echo(tmp_path):
    engine, store, inbox, fake, clock = hubspot_world(tmp_path)
    inbox.opt_out(OptOut(X, reason="manual", origin="user"))
    assert all(r.error is None for r in engine.sync_once())
    statuses = {sid: fake._status(X, sid)["status"] for sid in (101, 102)}
    assert statuses == {101: "UNSUBSCRIBED", 102: "UNSUBSCRIBED"}  # v4 shows every type opted out too

    clock.advance(60)
    read_back_creates_nothing(engine, store, inbox, "hubspot")


def test_hubspot_per_subscription_changes_of_our_unsubscribe_all_are_its_echo(tmp_path):
    """Whether the timeline lists one change per subscription type for an unsubscribe-all is not
    documented (HubSpot's own example groups SUBSCRIPTION_STATUS and PORTAL_STATUS changes of one
    event in one item); if it does, those changes are our echo, not topic opt-outs."""
    engine, store, inbox, fake, clock = hubspot_world(tmp_path)
    inbox.opt_out(OptOut(X, reason="manual", origin="user"))
    assert all(r.error is None for r in engine.sync_once())
    item = next(i for i in fake.timeline if i["recipient"] == X)
    wide = item["changes"][0]
    item["changes"] += [{**wide, "changeType": "SUBSCRIPTION_STATUS", "subscriptionId": sid, "source": API_SOURCE}
                        for sid in (101, 102)]

    clock.advance(60)
    read_back_creates_nothing(engine, store, inbox, "hubspot")


# -- Mailgun and SendGrid: no fan-out --------------------------------------------------------------------------


MG_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"


def test_mailgun_writes_one_record_tagged_all_and_reads_it_back_as_its_echo(tmp_path):
    clock = FakeClock()
    fake = FakeMailgun(MG_KEY, domains=("mg.example.com",), clock=clock)
    vendor = {"type": "mailgun", "api_key": MG_KEY, "domain": "mg.example.com",
              "topics": {"newsletter": "Newsletter", "product": "Product"}}
    engine, store, inbox = world(tmp_path, "mailgun", vendor, lambda s, t: MailgunAdapter(
        s, t, transport=httpx.MockTransport(fake.handle), clock=clock))
    inbox.opt_out(OptOut(X, reason="manual", origin="user"))
    assert all(r.error is None for r in engine.sync_once())
    assert fake.tags_of(X) == ["*"]  # one record, no topic tags

    clock.advance(60)
    read_back_creates_nothing(engine, store, inbox, "mailgun")
    lift_leaves_nothing(engine, store, "mailgun")


SG_KEY = "SG.abcdefghijklmnop.qrstuvwxyz0123456789-secret"


def test_sendgrid_writes_the_global_list_only_and_reads_it_back_as_its_echo(tmp_path):
    clock = FakeClock()
    fake = FakeSendGrid(SG_KEY, clock=clock)
    vendor = {"type": "sendgrid", "api_key": SG_KEY, "base_url": "https://api.sendgrid.test",
              "topics": {"newsletter": "101", "product": "102"}}
    engine, store, inbox = world(tmp_path, "sendgrid", vendor, lambda s, t: SendGridAdapter(
        s, t, transport=httpx.MockTransport(fake.handle), clock=clock))
    inbox.opt_out(OptOut(X, reason="manual", origin="user"))
    assert all(r.error is None for r in engine.sync_once())
    assert X in fake.globally_suppressed() and not fake.in_group(101) and not fake.in_group(102)

    clock.advance(60)
    read_back_creates_nothing(engine, store, inbox, "sendgrid")
    lift_leaves_nothing(engine, store, "sendgrid")
