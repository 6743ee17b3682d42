"""Contract tests of the SES v2 adapter against the hand-written fake (tests/fakes/ses.py).

The fake recomputes every request's Signature V4, so each passing call here was signed
correctly for its method, path, query and body. Needs the optional `ses` extra (botocore).
"""

from __future__ import annotations

import json

import httpx
import pytest

from adapters import registry
from adapters.ses import SesAdapter, SesSettings
from connector.engine import CycleReport, Engine
from connector.settings import validate_settings
from state.errors import ConfigError, PermanentError, TransientError
from state.models import ALREADY, APPLIED, PERMANENT, OptOut

from .fakes.clock import FakeClock
from .fakes.ses import FakeSes

ACCESS, SECRET, REGION = "AKIAEXAMPLEEXAMPLE01", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "eu-west-1"


def ses(fake: FakeSes | None = None, clock: FakeClock | None = None, **settings):
    """A fake SES account and an adapter talking to it through MockTransport, on one pretend clock."""
    clock = clock or FakeClock()
    fake = fake or FakeSes(ACCESS, SECRET, REGION, clock=clock)
    fake.clock = clock
    config = SesSettings.model_validate({"name": "ses", "region": REGION, "access_key_id": ACCESS,
                                         "secret_access_key": SECRET, "backoff_initial": 1, "backoff_max": 4,
                                         **settings})
    adapter = SesAdapter(config, {}, transport=httpx.MockTransport(fake.handle), clock=clock)
    return fake, adapter, clock


def outcomes(results):
    return [(r.optout.address, r.optout.reason, r.outcome) for r in results]


def test_ses_is_a_registered_type_with_a_regional_endpoint_and_hidden_keys(tmp_path):
    (tmp_path / "aws.secret").write_text(SECRET + "\n")
    settings = validate_settings({"adapters": [
        {"name": "ses", "type": "ses", "region": "us-east-1", "access_key_id": ACCESS,
         "secret_access_key_file": "aws.secret"}]}, tmp_path / "settings.toml")
    config = settings.adapter("ses")
    assert registry.ADAPTER_TYPES["ses"] is SesAdapter
    assert config.base_url == "https://email.us-east-1.amazonaws.com"
    assert config.secret_access_key.get_secret_value() == SECRET
    assert (config.rate_limit_requests, config.rate_limit_period, config.page_size) == (1, 1.0, 1000)
    assert SECRET not in repr(config) and SECRET not in str(settings.model_dump())


def test_settings_refuse_a_bad_region_a_lone_key_and_topics(tmp_path):
    with pytest.raises(ConfigError) as caught:
        validate_settings({"topics": {"newsletter": "News"}, "adapters": [
            {"name": "a", "type": "ses", "region": "Europe", "access_key_id": ACCESS, "secret_access_key": SECRET},
            {"name": "b", "type": "ses", "region": REGION, "access_key_id": ACCESS},
            {"name": "c", "type": "ses", "region": REGION, "topics": {"newsletter": "x"}}]},
            tmp_path / "settings.toml")
    text = str(caught.value)
    assert "AWS region" in text and "together" in text and "no topics" in text and SECRET not in text


def test_credentials_come_from_botocores_chain_when_not_in_settings(monkeypatch, tmp_path):
    for name, value in {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET,
                        "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    fake = FakeSes(ACCESS, SECRET, REGION)
    adapter = SesAdapter(SesSettings(name="ses", region=REGION), {}, transport=httpx.MockTransport(fake.handle))
    assert adapter.check()[0].startswith(f"region {REGION}: credentials valid")


def test_bounces_and_complaints_are_read_across_pages_with_next_token():
    fake, adapter, clock = ses(page_size=100)
    for i in range(230):
        fake.suppress(f"b{i:03d}@example.com", "BOUNCE", at=clock.now - 1000)
    fake.suppress("angry@example.com", "COMPLAINT", at=clock.now - 500)
    fake.suppress("not-an-address", "BOUNCE", at=clock.now - 500)
    pages = list(adapter.read_changes(None))
    optouts = [o for p in pages for o in p.optouts]
    assert len(optouts) == 231 and len(fake.calls("/suppression/addresses", "GET")) == 3
    complaint = next(o for o in optouts if o.address == "angry@example.com")
    assert (complaint.scope, complaint.reason, complaint.origin) == ("*", "spam_complaint", "system")
    assert {o.reason for o in optouts if o.address.startswith("b")} == {"hard_bounce"}
    assert [r.value for p in pages for r in p.rejected] == ["not-an-address"]
    assert [p.cursor is not None for p in pages] == [False, False, True]
    assert json.loads(pages[-1].cursor)["newest"] == 1_700_000_000 - 500


def test_increments_start_at_the_newest_seen_minus_the_overlap_and_list_problems_once():
    fake, adapter, clock = ses()
    fake.suppress("old@example.com", at=clock.now - 7200)
    fake.suppress("bad", at=clock.now - 7200)
    first = list(adapter.read_changes(None))
    clock.advance(60)
    fake.suppress("new@example.com", "COMPLAINT", at=clock.now)
    second = list(adapter.read_changes(first[-1].cursor))
    start = fake.calls("/suppression/addresses", "GET")[-1].params["StartDate"]
    assert start == ["2023-11-14T19:13:20Z"]  # newest seen (now - 2 h) minus the 1 h overlap
    # The newest entry seen is within the overlap and read again; its neighbour's problem is not listed again.
    assert sorted(o.address for p in second for o in p.optouts) == ["new@example.com", "old@example.com"]
    assert [r for p in second for r in p.rejected] == []


def test_writes_map_reasons_and_never_mislabel_other_opt_outs():
    fake, adapter, _ = ses()
    results = adapter.apply([OptOut("b@example.com", reason="hard_bounce", origin="system"),
                             OptOut("s@example.com", reason="spam_complaint", origin="system"),
                             OptOut("u@example.com", reason="unsubscribed"),
                             OptOut("t@example.com", "newsletter", reason="hard_bounce")])
    assert [r.outcome for r in results] == [APPLIED, APPLIED, PERMANENT, PERMANENT]
    assert "write_other_reasons_as" in results[2].message and "no topics" in results[3].message
    assert fake.held() == {"b@example.com": "BOUNCE", "s@example.com": "COMPLAINT"}
    assert fake.calls("/suppression/addresses", "PUT")[0].body == {"EmailAddress": "b@example.com",
                                                                   "Reason": "BOUNCE"}
    _, adapter, _ = ses(fake, write_other_reasons_as="BOUNCE")
    assert outcomes(adapter.apply([OptOut("u@example.com")])) == [("u@example.com", "unsubscribed", APPLIED)]
    assert fake.held()["u@example.com"] == "BOUNCE"


def test_an_existing_entry_is_already_and_a_complaint_is_never_overwritten():
    fake, adapter, _ = ses()
    fake.suppress("c@example.com", "COMPLAINT")
    fake.suppress("b@example.com", "BOUNCE")
    results = adapter.apply([OptOut("c@example.com", reason="hard_bounce"),
                             OptOut("b@example.com", reason="hard_bounce"),
                             OptOut("b@example.com", reason="spam_complaint")])
    assert [r.outcome for r in results] == [ALREADY, ALREADY, APPLIED]
    assert fake.held() == {"c@example.com": "COMPLAINT", "b@example.com": "COMPLAINT"}


def test_a_refused_address_fails_alone():
    fake, adapter, _ = ses()
    results = adapter.apply([OptOut("a@example.com", reason="hard_bounce"), OptOut("x@@y", reason="hard_bounce"),
                             OptOut("b@example.com", reason="hard_bounce")])
    assert [r.outcome for r in results] == [APPLIED, PERMANENT, APPLIED]
    assert "BadRequestException" in results[1].message and set(fake.held()) == {"a@example.com", "b@example.com"}


def test_too_many_requests_and_5xx_are_retried_by_the_shared_policy():
    fake, adapter, clock = ses()
    fake.fail(429, "TooManyRequestsException", times=2, message="Too many requests", headers={"Retry-After": "2"})
    fake.fail(503, "ServiceUnavailableException", times=1)
    assert outcomes(adapter.apply([OptOut("a@example.com", reason="hard_bounce")])) == [
        ("a@example.com", "hard_bounce", APPLIED)]
    assert clock.sleeps[:2] == [2.0, 2.0] and fake.statuses == [429, 429, 503, 404, 200]
    assert fake.held() == {"a@example.com": "BOUNCE"}


def test_throttling_beyond_the_budget_parks_the_batch():
    fake, adapter, _ = ses(retry_budget="5s")
    fake.fail(429, "TooManyRequestsException", times=100, headers={"Retry-After": "3"})
    with pytest.raises(TransientError):
        adapter.apply([OptOut("a@example.com", reason="hard_bounce")])


def test_a_wrong_secret_fails_the_signature_check_and_never_leaks():
    fake, adapter, _ = ses(FakeSes(ACCESS, "another-secret", REGION))
    with pytest.raises(PermanentError) as caught:
        adapter.apply([OptOut("a@example.com", reason="hard_bounce")])
    text = str(caught.value)
    assert "403" in text and "InvalidSignatureException" in text and "req-1234" in text and SECRET not in text
    assert SECRET not in repr(adapter) and SECRET not in repr(adapter.http)


def test_remove_deletes_but_never_a_complaint_the_lift_is_not_about():
    fake, adapter, _ = ses()
    fake.suppress("b@example.com", "BOUNCE")
    fake.suppress("c@example.com", "COMPLAINT")
    results = adapter.remove([OptOut("b@example.com", reason="hard_bounce"), OptOut("c@example.com", reason="manual"),
                              OptOut("absent@example.com", reason="hard_bounce")])
    assert [r.outcome for r in results] == [APPLIED, PERMANENT, ALREADY]
    assert fake.held() == {"c@example.com": "COMPLAINT"}


def test_check_reads_the_account_and_changes_nothing():
    fake, adapter, _ = ses()
    lines = adapter.check()
    assert lines[0] == f"region {REGION}: credentials valid; sending enabled"
    assert "account suppression list adds automatically on: BOUNCE, COMPLAINT" in lines
    assert not fake.calls(method="PUT") and not fake.calls(method="DELETE")


def test_bounces_and_complaints_flow_through_the_engine(tmp_path, memory_world):
    _, store, _, built = memory_world([{"name": "inbox"}])
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "adapters": [
        {"name": "inbox", "type": "memory", "interval": 1},
        {"name": "ses", "type": "ses", "region": REGION, "access_key_id": ACCESS, "secret_access_key": SECRET}]},
        tmp_path / "settings.toml")
    fake, adapter, clock = ses()
    engine = Engine(settings, store, {"inbox": built["inbox"], "ses": adapter})
    built["inbox"].opt_out(OptOut("bounced-elsewhere@example.com", reason="hard_bounce", origin="system"))
    built["inbox"].opt_out(OptOut("unsub@example.com", reason="unsubscribed"))
    fake.suppress("complained@example.com", "COMPLAINT", at=clock.now - 60)
    reports = engine.sync_once()
    assert [r.error for r in reports] == [None, None]
    assert fake.held() == {"complained@example.com": "COMPLAINT", "bounced-elsewhere@example.com": "BOUNCE"}
    assert store.suppression("complained@example.com")["reason"] == "spam_complaint"
    assert ("complained@example.com", "*") in built["inbox"].held
    failures = list(store.failures("ses"))
    assert [f["address"] for f in failures] == ["unsub@example.com"]
    clock.advance(60)
    assert all(r.error is None for r in engine.sync_once())
    assert store.conn.execute("SELECT count(*) FROM events WHERE kind = 'suppressed'").fetchone()[0] == 3
    assert len(fake.calls("/suppression/addresses", "PUT")) == 1


# -- AWS throttling that arrives as a 400 ---------------------------------------------------------------------


@pytest.mark.parametrize("code", ["Throttling", "ThrottlingException", "TooManyRequestsException",
                                  "RequestLimitExceeded"])
def test_a_400_throttling_code_is_retried_never_a_permanent_failure(code):
    fake, adapter, clock = ses()
    fake.fail(400, code, times=2, method="PUT", message="Rate exceeded")
    assert outcomes(adapter.apply([OptOut("a@example.com", reason="hard_bounce")])) == [
        ("a@example.com", "hard_bounce", APPLIED)]
    assert fake.statuses == [404, 400, 400, 200]  # retried by the shared policy, then written
    assert fake.held() == {"a@example.com": "BOUNCE"}


def test_a_400_throttling_code_beyond_the_budget_parks_the_item(tmp_path, memory_world):
    _, store, _, built = memory_world([{"name": "inbox"}])
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "adapters": [
        {"name": "inbox", "type": "memory", "interval": 1},
        {"name": "ses", "type": "ses", "region": REGION, "access_key_id": ACCESS, "secret_access_key": SECRET}]},
        tmp_path / "settings.toml")
    fake, adapter, _ = ses(retry_budget="5s")
    engine = Engine(settings, store, {"inbox": built["inbox"], "ses": adapter})
    built["inbox"].opt_out(OptOut("a@example.com", reason="hard_bounce", origin="system"))
    fake.fail(400, "ThrottlingException", times=1000, message="Rate exceeded")
    engine.sync_once()
    assert store.checkpoint("ses").applied_seq == 0  # parked: the watermark waits for it
    assert [f["kind"] for f in store.failures("ses")] in ([], ["transient"])
    assert not [f for f in store.failures("ses") if f["kind"] == "permanent"]
    fake.faults.clear()
    assert all(r.error is None for r in engine.sync_once())
    assert fake.held() == {"a@example.com": "BOUNCE"}


def test_a_throttling_code_in_the_body_alone_is_transient_too():
    """restJson errors name their type in a header; some AWS answers carry it only as `__type`."""
    fake, _, clock = ses()
    answers = [httpx.Response(400, json={"__type": "com.amazonaws.ses#ThrottlingException",
                                         "message": "Rate exceeded"})]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop() if answers and request.method == "PUT" else fake.handle(request)

    config = SesSettings.model_validate({"name": "ses", "region": REGION, "access_key_id": ACCESS,
                                         "secret_access_key": SECRET, "backoff_initial": 1, "backoff_max": 4})
    adapter = SesAdapter(config, {}, transport=httpx.MockTransport(handler), clock=clock)
    assert [r.outcome for r in adapter.apply([OptOut("a@example.com", reason="hard_bounce")])] == [APPLIED]
    assert fake.held() == {"a@example.com": "BOUNCE"}


# -- echoes must not swallow news --------------------------------------------------------------------------------


def ses_world(tmp_path, memory_world, **ses_settings):
    _, store, _, built = memory_world([{"name": "inbox"}])
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "adapters": [
        {"name": "inbox", "type": "memory", "interval": 1},
        {"name": "ses", "type": "ses", "region": REGION, "access_key_id": ACCESS, "secret_access_key": SECRET,
         **ses_settings}]}, tmp_path / "settings.toml")
    fake, adapter, clock = ses(**ses_settings)
    return Engine(settings, store, {"inbox": built["inbox"], "ses": adapter}), store, fake, clock, built["inbox"]


@pytest.mark.parametrize("written_as", ["BOUNCE", "COMPLAINT"])
def test_a_complaint_ses_held_before_our_apply_is_news_when_its_read_failed(tmp_path, memory_world, written_as):
    engine, store, fake, clock, inbox = ses_world(tmp_path, memory_world, write_other_reasons_as=written_as)
    fake.suppress("x@example.com", "COMPLAINT", at=clock.now - 3600)  # long before our apply
    inbox.opt_out(OptOut("x@example.com", reason="unsubscribed", origin="recipient"))
    engine.pull("inbox", CycleReport("inbox"))
    # SES's read fails in this cycle (not done here); its push goes through: SES held it already.
    report = CycleReport("ses")
    engine.push("ses", report)
    assert report.pushed == 1 and fake.held() == {"x@example.com": "COMPLAINT"}
    assert store.suppression("x@example.com")["reason"] == "unsubscribed"
    fake.faults.clear()
    clock.advance(60)
    assert all(r.error is None for r in engine.sync_once())
    row = store.suppression("x@example.com")
    assert (row["reason"], row["origin"]) == ("spam_complaint", "system")
    assert ("x@example.com", "*") in inbox.held
    assert [e["kind"] for e in store.events_for("x@example.com")].count("changed") == 1


def test_our_own_write_read_back_from_ses_changes_nothing(tmp_path, memory_world):
    """An unsubscribe written as BOUNCE (write_other_reasons_as) reads back as a bounce: our echo."""
    engine, store, fake, clock, inbox = ses_world(tmp_path, memory_world, write_other_reasons_as="BOUNCE")
    inbox.opt_out(OptOut("x@example.com", reason="unsubscribed", origin="recipient"))
    assert all(r.error is None for r in engine.sync_once())
    assert fake.held() == {"x@example.com": "BOUNCE"}
    clock.advance(60)
    assert all(r.error is None for r in engine.sync_once())
    assert engine.reconcile("ses").error is None
    row = store.suppression("x@example.com")
    assert (row["reason"], row["origin"]) == ("unsubscribed", "recipient")
    assert [e["kind"] for e in store.events_for("x@example.com")] == ["suppressed", "applied"]
