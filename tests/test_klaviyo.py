"""Contract tests of the Klaviyo adapter against the hand-written fake (tests/fakes/klaviyo.py).

Each test asserts what the fake now holds or received, or what the store recorded.
"""

from __future__ import annotations

import json

import httpx
import pytest

from adapters import registry
from adapters.klaviyo import KlaviyoAdapter, KlaviyoSettings, UnexpectedAnswer
from connector.engine import Engine
from connector.settings import validate_settings
from state.errors import ConfigError, TransientError
from state.models import ALREADY, APPLIED, PERMANENT, OptOut

from .fakes.clock import FakeClock
from .fakes.klaviyo import FakeKlaviyo

KEY = "pk_0123456789abcdef0123456789abcdef01"
TOPICS = {"newsletter": "The newsletter", "product": "Product updates"}
HOUR = 3600


def klaviyo(fake: FakeKlaviyo | None = None, clock: FakeClock | None = None, **settings):
    """A fake Klaviyo and an adapter talking to it through MockTransport, on one pretend clock."""
    clock = clock or FakeClock()
    fake = fake or FakeKlaviyo(KEY, clock=clock)
    fake.clock = clock
    config = KlaviyoSettings.model_validate({"name": "klaviyo", "api_key": KEY, "topics": {"newsletter": "Y6nRLr"},
                                             "backoff_initial": 1, "backoff_max": 4, **settings})
    return fake, KlaviyoAdapter(config, TOPICS, transport=httpx.MockTransport(fake.handle), clock=clock), clock


def read(pages):
    optouts, rejected, cursors = [], [], []
    for page in pages:
        optouts += page.optouts
        rejected += page.rejected
        cursors.append(page.cursor)
    return optouts, rejected, cursors


# -- settings --------------------------------------------------------------------------------------------------


def test_klaviyo_is_a_registered_type_and_validates_from_settings(tmp_path):
    (tmp_path / "klaviyo.key").write_text(KEY + "\n")
    settings = validate_settings({"topics": TOPICS, "adapters": [
        {"name": "kl", "type": "klaviyo", "api_key_file": "klaviyo.key", "topics": {"newsletter": "Y6nRLr"}}]},
        tmp_path / "settings.toml")
    config = settings.adapter("kl")
    assert registry.ADAPTER_TYPES["klaviyo"] is KlaviyoAdapter
    assert config.api_key.get_secret_value() == KEY
    assert (config.base_url, config.revision, config.batch_size, config.rate_limit_requests) == (
        "https://a.klaviyo.com", "2026-10-15", 100, 5)
    assert KEY not in repr(config) and KEY not in str(settings.model_dump())


def test_settings_refuse_oversized_batches_bad_list_ids_and_a_bad_revision(tmp_path):
    with pytest.raises(ConfigError) as caught:
        validate_settings({"topics": TOPICS, "adapters": [
            {"name": "kl", "type": "klaviyo", "api_key": KEY, "batch_size": 101, "revision": "latest",
             "topics": {"newsletter": "not a list"}}]}, tmp_path / "settings.toml")
    text = str(caught.value)
    assert "batch_size" in text and "revision" in text and "Klaviyo list id" in text and KEY not in text


# -- reading ---------------------------------------------------------------------------------------------------


def test_first_read_maps_every_reason_and_mapped_lists_and_saves_the_newest_time():
    fake, adapter, clock = klaviyo()
    fake.suppress("unsub@example.com", "UNSUBSCRIBE", at=clock.now - 5 * HOUR)
    fake.suppress("bounce@example.com", "HARD_BOUNCE", at=clock.now - 4 * HOUR)
    fake.suppress("spam@example.com", "SPAM_COMPLAINT", at=clock.now - 3 * HOUR)
    fake.suppress("user@example.com", "USER_SUPPRESSED", at=clock.now - 2 * HOUR)
    fake.suppress("invalid@example.com", "INVALID_EMAIL", at=clock.now - 2 * HOUR)
    fake.suppress("odd@example.com", "SOMETHING_NEW", at=clock.now - 2 * HOUR)
    fake.leave_list("topic@example.com", "Y6nRLr", at=clock.now - HOUR)
    fake.leave_list("other@example.com", "QxW2Zp", at=clock.now - HOUR)
    optouts, rejected, cursors = read(adapter.read_changes(None))
    got = {(o.address, o.scope): (o.reason, o.origin) for o in optouts}
    assert got == {("unsub@example.com", "*"): ("unsubscribed", "recipient"),
                   ("bounce@example.com", "*"): ("hard_bounce", "system"),
                   ("spam@example.com", "*"): ("spam_complaint", "system"),
                   ("user@example.com", "*"): ("manual", "user"),
                   ("topic@example.com", "newsletter"): ("unsubscribed", "recipient")}
    assert [r.value for r in rejected] == ["odd@example.com"] and "SOMETHING_NEW" in rejected[0].reason
    assert json.loads(cursors[-1])["newest"].startswith("2023-11-14T21:13:20")  # the list suppression, 1 h ago
    calls = fake.calls("/api/profiles", "GET")
    assert [c.params["filter"] for c in calls] == [
        "greater-than(subscriptions.email.marketing.suppression.timestamp,1970-01-01T00:00:00Z)",
        "greater-than(subscriptions.email.marketing.list_suppressions.timestamp,1970-01-01T00:00:00Z)"]
    assert all(c.headers["revision"] == "2026-10-15" and c.headers["authorization"] == f"Klaviyo-API-Key {KEY}"
               and c.params["additional-fields[profile]"] == "subscriptions" for c in calls)


def test_a_read_from_the_cursor_asks_from_the_newest_time_minus_the_overlap_and_lists_problems_once():
    fake, adapter, clock = klaviyo()
    fake.suppress("old@example.com", "UNSUBSCRIBE", at=clock.now - 2 * HOUR)
    fake.suppress("odd@example.com", "SOMETHING_NEW", at=clock.now - 60)
    _, first_rejected, cursors = read(adapter.read_changes(None))
    assert len(first_rejected) == 1
    clock.advance(HOUR)
    fake.suppress("new@example.com", "SPAM_COMPLAINT", at=clock.now - 10)
    optouts, rejected, _ = read(adapter.read_changes(cursors[-1]))
    since = fake.calls("/api/profiles", "GET")[-2].params["filter"]
    assert since == "greater-than(subscriptions.email.marketing.suppression.timestamp,2023-11-14T22:02:20Z)"
    # The newest seen (now - 60 s) minus the 10 min overlap: the old one is outside, the odd one re-read quietly.
    assert {o.address for o in optouts} == {"new@example.com"} and rejected == []


def test_reads_follow_links_next_page_by_page_and_refuse_a_cursor_that_comes_back():
    fake, adapter, clock = klaviyo(page_size=2)
    for n in range(5):
        fake.suppress(f"u{n}@example.com", at=clock.now - 100 + n)
    optouts, _, _ = read(adapter.read_all())
    assert sorted(o.address for o in optouts) == [f"u{n}@example.com" for n in range(5)]
    assert len(fake.calls("/api/profiles", "GET")) == 3 + 1  # 3 pages of suppressions, 1 of list suppressions
    stuck = KlaviyoAdapter(adapter.settings, TOPICS, clock=clock, transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json={"data": [], "links": {
            "next": "https://a.klaviyo.com/api/profiles?page%5Bcursor%5D=same"}})))
    with pytest.raises(UnexpectedAnswer, match="repeats"):
        list(stuck.read_all())


def test_an_answer_of_the_wrong_shape_is_a_clear_adapter_error():
    _, adapter, clock = klaviyo()
    broken = KlaviyoAdapter(adapter.settings, TOPICS, clock=clock, transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json={"data": [{"type": "profile"}]})))
    with pytest.raises(UnexpectedAnswer, match="unexpected shape"):
        list(broken.read_changes(None))


# -- writing ---------------------------------------------------------------------------------------------------


def test_apply_suppresses_all_email_and_unsubscribes_topics_from_their_list_in_jobs_of_at_most_100():
    fake, adapter, _ = klaviyo()
    batch = [OptOut(f"a{n}@example.com") for n in range(150)] + [OptOut("t@example.com", "newsletter"),
                                                                 OptOut("p@example.com", "product")]
    results = adapter.apply(batch)
    assert [r.outcome for r in results] == [APPLIED] * 151 + [PERMANENT]
    assert "no Klaviyo list" in results[-1].message
    assert all(r.held_as == "manual" for r in results[:151])
    assert [(kind, len(emails)) for kind, emails in fake.jobs] == [
        ("profile-suppression-bulk-create-job", 100), ("profile-suppression-bulk-create-job", 50),
        ("profile-subscription-bulk-delete-job", 1)]
    assert fake.reasons_of("a149@example.com") == {"USER_SUPPRESSED"} and fake.lists_of("t@example.com") == {"Y6nRLr"}
    body = fake.calls("/api/profile-subscription-bulk-delete-jobs", "POST")[0].body
    assert body["data"]["relationships"]["list"]["data"] == {"type": "list", "id": "Y6nRLr"}


def test_a_refused_address_fails_alone_and_the_rest_of_its_job_is_sent():
    fake, adapter, _ = klaviyo()
    results = adapter.apply([OptOut("good@example.com"), OptOut("bad@example"), OptOut("fine@example.com")])
    assert [r.outcome for r in results] == [APPLIED, PERMANENT, APPLIED]
    assert "Invalid email address" in results[1].message
    assert fake.reasons_of("good@example.com") == fake.reasons_of("fine@example.com") == {"USER_SUPPRESSED"}


def test_rate_limits_are_waited_out_and_a_held_suppression_is_not_overwritten():
    fake, adapter, clock = klaviyo()
    fake.suppress("spam@example.com", "SPAM_COMPLAINT", at=clock.now - 60)
    fake.fail(429, times=1, headers={"Retry-After": "7"})
    results = adapter.apply([OptOut("spam@example.com"), OptOut("new@example.com")])
    assert [r.outcome for r in results] == [APPLIED, APPLIED]
    assert 7 in clock.sleeps
    assert fake.reasons_of("spam@example.com") == {"SPAM_COMPLAINT"}
    fake.steady = 2  # two calls left this minute: RateLimit-Remaining reaches 0, the client holds back
    adapter.apply([OptOut("x@example.com")])
    adapter.apply([OptOut("y@example.com")])
    assert any(s >= 1 for s in clock.sleeps[1:]) and fake.reasons_of("y@example.com") == {"USER_SUPPRESSED"}


def test_a_batch_that_could_not_be_sent_at_all_is_parked_whole():
    fake, adapter, _ = klaviyo(retry_budget="5s")
    fake.fail(503, times=100, headers={"Retry-After": "3"})
    with pytest.raises(TransientError, match="no item of the batch could be sent"):
        adapter.apply([OptOut("a@example.com"), OptOut("b@example.com")])
    assert fake.profiles == {}


def test_remove_lifts_only_what_a_user_suppressed_and_says_why_for_the_rest():
    fake, adapter, clock = klaviyo()
    adapter.apply([OptOut("ours@example.com")])
    fake.suppress("bounce@example.com", "HARD_BOUNCE", at=clock.now - 60)
    fake.suppress("unsub@example.com", "UNSUBSCRIBE", at=clock.now - 60)
    results = adapter.remove([OptOut("ours@example.com", reason="manual", origin="user"),
                              OptOut("bounce@example.com", reason="manual", origin="user"),
                              OptOut("unsub@example.com", reason="manual", origin="user"),
                              OptOut("absent@example.com", reason="manual", origin="user"),
                              OptOut("ours@example.com", "newsletter", reason="manual", origin="user")])
    assert [r.outcome for r in results] == [APPLIED, PERMANENT, PERMANENT, ALREADY, PERMANENT]
    assert "HARD_BOUNCE" in results[1].message and "consent" in results[4].message
    assert fake.reasons_of("ours@example.com") == set()
    assert fake.reasons_of("bounce@example.com") == {"HARD_BOUNCE"} and fake.reasons_of("unsub@example.com") == {
        "UNSUBSCRIBE"}


# -- check -----------------------------------------------------------------------------------------------------


def test_check_lists_mapped_and_unmapped_lists_and_refuses_a_missing_one():
    fake, adapter, _ = klaviyo()
    lines = adapter.check()
    assert lines[0] == "API key valid (revision 2026-10-15); 2 lists"
    assert "topic newsletter -> list Y6nRLr (Newsletter)" in lines
    assert any(line.startswith("UNMAPPED: list QxW2Zp (Product news)") for line in lines)
    assert lines[-1] == "suppressed profiles: readable"
    _, missing, _ = klaviyo(fake, topics={"newsletter": "Gone12"})
    with pytest.raises(ConfigError, match="list Gone12, which this Klaviyo account does not have"):
        missing.check()


def test_a_refused_key_is_explained_without_the_key():
    fake, adapter, clock = klaviyo()
    wrong = KlaviyoAdapter(KlaviyoSettings.model_validate({"name": "klaviyo", "api_key": "pk_wrong"}), TOPICS,
                           transport=httpx.MockTransport(fake.handle), clock=clock)
    with pytest.raises(Exception) as caught:
        wrong.check()
    explained = wrong.probe_refusal(caught.value)
    assert explained.startswith("the api_key was refused") and "pk_wrong" not in explained + str(caught.value)


# -- through the engine ----------------------------------------------------------------------------------------


def test_opt_outs_flow_both_ways_through_the_engine_and_our_echo_changes_nothing(tmp_path, memory_world):
    _, store, _, built = memory_world([{"name": "inbox"}], topics=TOPICS)
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "topics": TOPICS, "adapters": [
        {"name": "inbox", "type": "memory", "interval": 1},
        {"name": "klaviyo", "type": "klaviyo", "api_key": KEY, "topics": {"newsletter": "Y6nRLr"}}]},
        tmp_path / "settings.toml")
    fake, adapter, clock = klaviyo()
    engine = Engine(settings, store, {"inbox": built["inbox"], "klaviyo": adapter})
    built["inbox"].opt_out(OptOut("from-inbox@example.com", reason="manual", origin="user"))
    built["inbox"].opt_out(OptOut("topic@example.com", "newsletter", reason="manual", origin="user"))
    fake.suppress("unsub@example.com", "UNSUBSCRIBE", at=clock.now - 30)
    fake.suppress("bounced@example.com", "HARD_BOUNCE", at=clock.now - 30)
    fake.leave_list("leaver@example.com", "Y6nRLr", at=clock.now - 30)
    assert all(r.error is None for r in engine.sync_once())
    assert fake.reasons_of("from-inbox@example.com") == {"USER_SUPPRESSED"}
    assert fake.lists_of("topic@example.com") == {"Y6nRLr"}
    assert store.suppression("unsub@example.com")["origin"] == "recipient"
    assert store.suppression("bounced@example.com")["reason"] == "hard_bounce"
    assert store.suppression("leaver@example.com", "newsletter")["origin"] == "recipient"
    assert ("bounced@example.com", "*") in set(built["inbox"].held)
    suppressed = store.conn.execute("SELECT count(*) FROM events WHERE kind = 'suppressed'").fetchone()[0]
    clock.advance(60)
    assert all(r.error is None for r in engine.sync_once())
    # Our own writes read back as USER_SUPPRESSED (manual, user): the echo of what we sent, nothing new.
    assert store.conn.execute("SELECT count(*) FROM events WHERE kind = 'suppressed'").fetchone()[0] == suppressed
    assert store.suppression("from-inbox@example.com")["origin"] == "user"
