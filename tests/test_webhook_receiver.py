"""The webhook receiver in-process: real uvicorn on 127.0.0.1, a real store, every vendor's check.

Signed requests are staged under the polling rules before the 2xx; unsigned, wrongly signed, stale
and replayed ones get 401 and change nothing; the limits answer 413, 400 and 503.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from connector.commands import build_adapters
from connector.settings import validate_settings
from receiver.app import WebhookReceiver
from receiver.hooks import build_hooks
from state import resubscribes
from state.lifts import lift
from state.models import OptOut, Page, Resubscribe, to_utc_iso
from state.store import Store

from . import webhook_signing as sign

LIST = "a1b2c3d4e5"
GROUP = 77


def settings_for(tmp_path: Path, **webhooks):
    common = {"role": "read", "interval": 60}
    raw = {
        "store": {"path": str(tmp_path / "store.db")},
        "webhooks": {"listen": "127.0.0.1:0", **webhooks},
        "topics": {"newsletter": "Newsletter", "promos": "Promotions"},
        "adapters": [
            {"name": "sg", "type": "sendgrid", "api_key": "SG.k.s", "base_url": "https://api.example.test",
             "webhook_public_key": sign.sendgrid_public_key(), "topics": {"newsletter": str(GROUP)}, **common},
            {"name": "mg", "type": "mailgun", "api_key": "key-x", "domain": "mg.example.com",
             "base_url": "https://api.example.test", "webhook_secret": sign.MAILGUN_KEY,
             "topics": {"promos": "promo-tag"}, **common},
            {"name": "pm", "type": "postmark", "server_token": "pm", "base_url": "https://api.example.test",
             "webhook_secret": sign.POSTMARK_PASSWORD, "topics": {"newsletter": "broadcast"}, **common},
            {"name": "mc", "type": "mailchimp", "api_key": "0123456789abcdef0123456789abcdef-us21",
             "list_id": LIST, "base_url": "https://us21.api.example.test/3.0",
             "webhook_secret": sign.MAILCHIMP_SECRET, **common},
            {"name": "ses", "type": "ses", "region": "eu-west-1", "access_key_id": "AKIAFAKE",
             "secret_access_key": "fake", "base_url": "https://email.example.test",
             "webhook_topic_arns": [sign.TOPIC_ARN], **common},
            {"name": "sink", "type": "csv_file", "path": str(tmp_path / "out.csv"), "role": "write"},
        ],
    }
    return validate_settings(raw, tmp_path / "settings.toml")


class World:
    """A receiver over a store, with what it woke and what the SNS fetcher was asked for."""

    def __init__(self, tmp_path: Path, **webhooks):
        self.settings = settings_for(tmp_path, **webhooks)
        self.store = Store(self.settings.store.path)
        self.woken: list[str] = []
        self.fetched: list[str] = []
        self.urls = {sign.CERT_URL: sign.sns_key_and_cert()[1]}
        self.adapters = build_adapters(self.settings, ["sg", "mg", "pm", "mc", "ses"])
        hooks = build_hooks(self.settings, self.adapters, sign.sns_fetch_from(self.urls, self.fetched))
        self.receiver = WebhookReceiver(self.settings, hooks, wake=self.woken.append).start()
        self.client = httpx.Client(base_url=self.receiver.url, timeout=10)

    def post(self, name: str, request: tuple[str, dict, bytes]) -> httpx.Response:
        suffix, headers, body = request
        return self.client.post(f"/hooks/{name}{suffix}", headers=headers, content=body)

    def rows(self) -> dict[tuple[str, str], tuple]:
        return {(a, s): (r, o, src) for a, s, r, o, src in self.store.conn.execute(
            "SELECT address, scope, reason, origin, source FROM suppressions")}

    def snapshot(self) -> tuple:
        """Everything a request could change in the store."""
        conn = self.store.conn
        return tuple(conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in (
            "suppressions", "events", "staged", "failures", "webhook_receipts", "checkpoints"))

    def metric(self, adapter: str, outcome: str) -> float:
        return self.receiver.counters.requests.labels(adapter, outcome)._value.get()

    def close(self) -> None:
        self.client.close()
        self.receiver.stop()
        for adapter in self.adapters.values():
            adapter.close()
        self.store.close()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


# -- every vendor: a signed request is staged exactly as a polled one -----------------------------------


def test_sendgrid_events_are_staged_as_the_polled_lists_would_read_them(world):
    answer = world.post("sg", sign.sendgrid_request([
        sign.sendgrid_event("all@example.com"),
        sign.sendgrid_event("group@example.com", "group_unsubscribe", asm_group_id=GROUP),
        sign.sendgrid_event("spam@example.com", "spamreport"),
        sign.sendgrid_event("hard@example.com", "bounce", type="bounce", status="5.1.1", reason="no such user"),
        sign.sendgrid_event("blocked@example.com", "bounce", type="blocked", status="4.0.0"),
        sign.sendgrid_event("blocked-unknown@example.com", "bounce", type="blocked"),  # no status: still temporary
        sign.sendgrid_event("dropped@example.com", "dropped", reason="Bounced Address"),
        sign.sendgrid_event("opened@example.com", "open"),
    ]))
    assert answer.status_code == 200, answer.text
    assert answer.json()["added"] == 4
    assert world.rows() == {
        ("all@example.com", "*"): ("unsubscribed", "recipient", "sg"),
        ("group@example.com", "newsletter"): ("unsubscribed", "recipient", "sg"),
        ("spam@example.com", "*"): ("spam_complaint", "system", "sg"),
        ("hard@example.com", "*"): ("hard_bounce", "system", "sg"),
    }
    assert world.woken == ["sg"]
    # Staged and promoted in the request: nothing waits in staging, the read cursor did not move.
    assert world.store.staged_count("sg") == 0 and world.store.checkpoint("sg").read_cursor is None


def test_mailgun_events_are_staged_with_tags_as_topics_and_temporary_failures_ignored(world):
    for data in (sign.mailgun_event("out@example.com", tags=[]),
                 sign.mailgun_event("promo@example.com", tags=["promo-tag"]),
                 sign.mailgun_event("spam@example.com", "complained"),
                 sign.mailgun_event("hard@example.com", "failed", severity="permanent",
                                    **{"delivery-status": {"code": 550, "message": "no such user"}}),
                 sign.mailgun_event("soft@example.com", "failed", severity="temporary",
                                    **{"delivery-status": {"code": 452}}),
                 sign.mailgun_event("retrying@example.com", "failed", severity="temporary")):
        assert world.post("mg", sign.mailgun_request(data)).status_code == 200
    assert world.rows() == {
        ("out@example.com", "*"): ("unsubscribed", "recipient", "mg"),
        ("promo@example.com", "promos"): ("unsubscribed", "recipient", "mg"),
        ("spam@example.com", "*"): ("spam_complaint", "system", "mg"),
        ("hard@example.com", "*"): ("hard_bounce", "system", "mg"),
    }


def test_postmark_subscription_changes_bounces_and_complaints_are_staged(world):
    for payload in (sign.postmark_unsubscribe("out@example.com"),
                    sign.postmark_unsubscribe("topic@example.com", "broadcast"),
                    sign.postmark_unsubscribe("admin@example.com", Origin="Customer"),
                    sign.postmark_unsubscribe("back@example.com", SuppressSending=False, SuppressionReason=None),
                    sign.postmark_unsubscribe("back2@example.com", SuppressSending=False),
                    sign.postmark_unsubscribe("other-stream@example.com", "unknown-stream"),
                    {"RecordType": "Bounce", "ID": 42, "Type": "HardBounce", "Email": "hard@example.com",
                     "BouncedAt": "2026-11-28T10:00:00Z", "MessageStream": "outbound"},
                    {"RecordType": "Bounce", "ID": 43, "Type": "SoftBounce", "Email": "soft@example.com",
                     "MessageStream": "outbound"},
                    {"RecordType": "SpamComplaint", "ID": 44, "Type": "SpamComplaint", "Email": "spam@example.com",
                     "MessageStream": "outbound"}):
        assert world.post("pm", sign.postmark_request(payload)).status_code == 200
    assert world.rows() == {
        ("out@example.com", "*"): ("unsubscribed", "recipient", "pm"),
        ("topic@example.com", "newsletter"): ("unsubscribed", "recipient", "pm"),
        ("admin@example.com", "*"): ("manual", "user", "pm"),
        ("hard@example.com", "*"): ("hard_bounce", "system", "pm"),
        ("spam@example.com", "*"): ("spam_complaint", "system", "pm"),
    }


def test_mailchimp_unsubscribes_and_cleaned_members_are_staged_and_its_url_check_answered(world):
    assert world.client.get(f"/hooks/mc/{sign.MAILCHIMP_SECRET}").status_code == 200
    assert world.client.get("/hooks/mc/anything").status_code == 200  # the validator's GET: no secret check
    for fields in (sign.mailchimp_unsubscribe("out@example.com", LIST),
                   sign.mailchimp_unsubscribe("deleted@example.com", LIST, **{"data[action]": "delete"}),
                   sign.mailchimp_unsubscribe("other@example.com", "zzzzzz"),
                   {"type": "cleaned", "fired_at": "2026-11-28 10:00:00", "data[email]": "hard@example.com",
                    "data[list_id]": LIST, "data[reason]": "hard"},
                   {"type": "cleaned", "fired_at": "2026-11-28 10:00:00", "data[email]": "abuse@example.com",
                    "data[list_id]": LIST, "data[reason]": "abuse"},
                   {"type": "subscribe", "fired_at": "2026-11-28 10:00:00", "data[email]": "in@example.com",
                    "data[list_id]": LIST}):
        assert world.post("mc", sign.mailchimp_request(fields)).status_code == 200
    assert world.rows() == {
        ("out@example.com", "*"): ("unsubscribed", "recipient", "mc"),
        ("hard@example.com", "*"): ("hard_bounce", "system", "mc"),
        ("abuse@example.com", "*"): ("spam_complaint", "system", "mc"),
    }
    # The abuse report keeps its time and details as the polled abuse-report list would give them.
    occurred, details = world.store.conn.execute(
        "SELECT occurred_at, details FROM suppressions WHERE address = 'abuse@example.com'").fetchone()
    assert occurred == "2026-11-28T10:00:00.000000+00:00"
    assert json.loads(details) == {"mailchimp_list": LIST, "mailchimp_abuse_report": None, "campaign_id": None}


def test_ses_permanent_bounces_and_complaints_through_sns_are_staged(world):
    complaint = {"notificationType": "Complaint", "mail": {},
                 "complaint": {"complainedRecipients": [{"emailAddress": "spam@example.com"}],
                               "timestamp": "2026-11-28T10:00:00.000Z"}}
    for message in (sign.sns_message(sign.ses_bounce("hard@example.com", "hard2@example.com")),
                    sign.sns_message(sign.ses_bounce("soft@example.com", bounce_type="Transient"), version="2"),
                    sign.sns_message(complaint, version="2")):
        assert world.post("ses", sign.ses_request(message)).status_code == 200
    assert world.rows() == {
        ("hard@example.com", "*"): ("hard_bounce", "system", "ses"),
        ("hard2@example.com", "*"): ("hard_bounce", "system", "ses"),
        ("spam@example.com", "*"): ("spam_complaint", "system", "ses"),
    }
    assert world.fetched == [sign.CERT_URL]  # fetched once, then kept


def test_an_sns_subscription_is_confirmed_only_after_its_signature_and_host_are_checked(world):
    good = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=t"
    world.urls[good] = b"<ConfirmSubscriptionResponse/>"
    confirmation = sign.sns_message("You have chosen to subscribe", kind="SubscriptionConfirmation",
                                    SubscribeURL=good, Token="t")
    answer = world.post("ses", sign.ses_request(confirmation))
    assert answer.status_code == 200 and "confirmed" in answer.text and good in world.fetched
    evil = "https://attacker.example.com/?Action=ConfirmSubscription"
    forged = sign.sns_message("x", kind="SubscriptionConfirmation", SubscribeURL=evil, Token="t")
    assert world.post("ses", sign.ses_request(forged)).status_code == 401
    bad_cert_host = sign.sns_message(sign.ses_bounce("x@example.com"),
                                     cert_url="https://attacker.example.com/cert.pem")
    assert world.post("ses", sign.ses_request(bad_cert_host)).status_code == 401
    other_topic = sign.sns_message(sign.ses_bounce("x@example.com"), topic="arn:aws:sns:eu-west-1:1:other")
    assert world.post("ses", sign.ses_request(other_topic)).status_code == 401
    assert evil not in world.fetched and all("attacker" not in url for url in world.fetched)
    assert world.rows() == {}


# -- refusals: 401, nothing stored, counted ------------------------------------------------------------


def _forgeries():
    other_ec = sign.ec.generate_private_key(sign.ec.SECP256R1())
    other_rsa = sign.rsa.generate_private_key(public_exponent=65537, key_size=2048)
    old = time.time() - 3600
    yield "sg", sign.sendgrid_request([sign.sendgrid_event("f@example.com")], key=other_ec)
    yield "sg", sign.sendgrid_request([sign.sendgrid_event("f@example.com")], at=old)
    yield "sg", ("", {"Content-Type": "application/json"}, b'[{"email": "f@example.com", "event": "unsubscribe"}]')
    yield "mg", sign.mailgun_request(sign.mailgun_event("f@example.com"), key="wrong-key")
    yield "mg", sign.mailgun_request(sign.mailgun_event("f@example.com"), at=old)
    yield "pm", sign.postmark_request(sign.postmark_unsubscribe("f@example.com"), password="wrong")
    yield "pm", ("", {"Content-Type": "application/json"}, json.dumps(sign.postmark_unsubscribe("f@example.com")).encode())
    yield "mc", sign.mailchimp_request(sign.mailchimp_unsubscribe("f@example.com", LIST), secret="wrong-secret-0000")
    yield "mc", ("", {"Content-Type": "application/x-www-form-urlencoded"}, b"type=unsubscribe&data[email]=f@example.com")
    # Bodies that cannot be read at all still get 401, not 400: the check comes before the body is read.
    yield "sg", ("", sign.sendgrid_request([], key=other_ec)[1], b"\x00not json")
    yield "pm", ("", {"Authorization": "Basic d3Jvbmc6d3Jvbmc="}, b"\x00not json")
    yield "mc", ("/wrong-secret-0000", {}, b"\x00not a form")
    yield "ses", sign.ses_request(sign.sns_message(sign.ses_bounce("f@example.com"), key=other_rsa))
    yield "ses", sign.ses_request(sign.sns_message(
        sign.ses_bounce("f@example.com"), at=sign.dt.datetime.now(sign.dt.timezone.utc) - sign.dt.timedelta(hours=3)))


def test_unsigned_wrongly_signed_and_stale_requests_get_401_change_nothing_and_are_counted(world):
    before = world.snapshot()
    refused: dict[str, int] = {}
    for name, request in _forgeries():
        answer = world.post(name, request)
        assert answer.status_code == 401, (name, answer.text)
        refused[name] = refused.get(name, 0) + 1
    assert world.snapshot() == before
    for name, count in refused.items():
        assert world.metric(name, "unauthorized") == count


def test_a_replayed_signature_gets_401_and_a_retried_event_changes_nothing(world):
    request = sign.sendgrid_request([sign.sendgrid_event("once@example.com", sg_event_id="evt-1")])
    assert world.post("sg", request).status_code == 200
    after_first = world.snapshot()
    assert world.post("sg", request).status_code == 401  # the same signed request again: a replay
    token_request = sign.mailgun_request(sign.mailgun_event("mg@example.com"), token="t" * 50)
    assert world.post("mg", token_request).status_code == 200
    after_mailgun = world.snapshot()
    assert world.post("mg", token_request).status_code == 401
    assert world.snapshot() == after_mailgun and after_first != after_mailgun
    # A retry is signed anew but carries the same event id: accepted, and nothing changes.
    time.sleep(1.1)  # a new timestamp, so a new signature
    retry = sign.sendgrid_request([sign.sendgrid_event("once@example.com", sg_event_id="evt-1")])
    answer = world.post("sg", retry)
    assert answer.status_code == 200 and answer.json()["duplicates"] == 1
    suppressions, events = world.snapshot()[:2]
    assert suppressions == after_mailgun[0] and events == after_mailgun[1]
    assert world.metric("sg", "unauthorized") == 1 and world.metric("mg", "unauthorized") == 1


def test_pushed_events_follow_lifts_echoes_stronger_reasons_and_the_mass_change_guard(tmp_path):
    w = World(tmp_path)
    try:
        store = w.store
        # A lifted opt-out does not come back from an older (or undated) event.
        store.ingest_page("sg", Page([OptOut("lifted@example.com", "*", "manual", "user")]), save_cursor=False)
        store.promote("sg")
        lift(store, "lifted@example.com", "*", "consent", "asked to be mailed again", "test")
        old = sign.sendgrid_event("lifted@example.com", timestamp=int(time.time()) - 86_400)
        # A complaint strengthens a stored unsubscribe.
        store.ingest_page("mg", Page([OptOut("up@example.com", "*", "unsubscribed", "recipient")]),
                          save_cursor=False)
        store.promote("mg")
        answer = w.post("sg", sign.sendgrid_request([old, sign.sendgrid_event("up@example.com", "spamreport")]))
        assert answer.status_code == 200 and answer.json()["added"] == 0 and answer.json()["changed"] == 1
        assert ("lifted@example.com", "*") not in w.rows()
        assert w.rows()[("up@example.com", "*")] == ("spam_complaint", "system", "mg")
    finally:
        w.close()


def test_a_pushed_opt_out_newer_than_a_recipients_resubscribe_ends_its_release(world):
    # Issue 17's rule holds for pushed events too: a release ends only on an opt-out dated after it.
    store, now = world.store, int(time.time())
    store.ingest_page("mg", Page([OptOut("ann@example.com", "*", "unsubscribed", "recipient",
                                         to_utc_iso(datetime.fromtimestamp(now - 3 * 86_400, timezone.utc)))]),
                      save_cursor=False)
    store.promote("mg")
    resubscribed = to_utc_iso(datetime.fromtimestamp(now - 86_400, timezone.utc))
    store.ingest_page("mc", Page(resubscribes=[Resubscribe("ann@example.com", "*", "recipient", resubscribed,
                                                           {"test": "recipient's own"})]), save_cursor=False)
    assert resubscribes.releases_of(store, "ann@example.com", "*") == ["mc"]
    older = sign.sendgrid_event("ann@example.com", timestamp=now - 2 * 86_400)
    assert world.post("sg", sign.sendgrid_request([older])).status_code == 200
    assert resubscribes.releases_of(store, "ann@example.com", "*") == ["mc"]
    assert not store.checkpoint("mc").reconcile_requested
    assert world.post("sg", sign.sendgrid_request([sign.sendgrid_event("ann@example.com")])).status_code == 200
    assert resubscribes.releases_of(store, "ann@example.com", "*") == []
    ended = [e for e in store.events_for("ann@example.com") if e["kind"] == "release_ended"]
    assert [(e["source"], e["target"]) for e in ended] == [("sg", "mc")]
    assert store.checkpoint("mc").reconcile_requested  # so that the opt-out is re-applied there


def test_more_new_opt_outs_than_max_new_per_cycle_within_a_window_pause_the_adapter(tmp_path):
    w = World(tmp_path)
    try:
        w.settings.adapter("sg").max_new_per_cycle = 3
        batch = [sign.sendgrid_event(f"p{i}@example.com") for i in range(2)]
        assert w.post("sg", sign.sendgrid_request(batch)).json()["added"] == 2
        more = [sign.sendgrid_event(f"q{i}@example.com") for i in range(2)]
        answer = w.post("sg", sign.sendgrid_request(more))
        assert answer.status_code == 200 and answer.json()["paused"] is True  # 2 + 2 > 3 in one window
        assert w.store.checkpoint("sg").paused and w.store.staged_count("sg") == 2
        assert len(w.rows()) == 2
        # While paused, what arrives stays staged (durable) for `approve`.
        w.post("sg", sign.sendgrid_request([sign.sendgrid_event("r@example.com")]))
        assert w.store.staged_count("sg") == 3 and len(w.rows()) == 2
    finally:
        w.close()


def test_a_store_that_cannot_be_written_answers_503_and_keeps_nothing(world):
    world.settings.store.busy_timeout = 0.2  # the receiver's connections wait this long for the lock
    blocker = sqlite3.connect(world.settings.store.path, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the store
    try:
        answer = world.post("sg", sign.sendgrid_request([sign.sendgrid_event("wait@example.com")]))
        assert answer.status_code == 503 and answer.headers.get("retry-after")
        assert answer.text == "the store cannot be written now\n"
    finally:
        blocker.rollback()
        blocker.close()
    assert world.rows() == {} and world.metric("sg", "unavailable") == 1
    # The vendor's retry then goes through.
    assert world.post("sg", sign.sendgrid_request([sign.sendgrid_event("wait@example.com")])).status_code == 200
    assert ("wait@example.com", "*") in world.rows()


# -- limits --------------------------------------------------------------------------------------------


def test_limits_answer_413_for_a_large_body_404_for_no_receiver_and_405_for_another_method(world):
    large = b"[" + b" " * (1024 * 1024) + b"]"
    answer = world.client.post("/hooks/sg", content=large)
    assert answer.status_code == 413 and "max_body" in answer.text
    assert world.client.post("/hooks/sink", content=b"[]").status_code == 404
    assert world.client.post("/hooks/nobody", content=b"[]").status_code == 404
    assert world.client.put("/hooks/sg", content=b"[]").status_code == 405


@contextmanager
def raw(world: World):
    host, port = world.receiver.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


def read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer (head and its Content-Length body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_slow_headers_and_a_slow_body_get_400_within_their_timeouts(tmp_path):
    w = World(tmp_path, header_timeout=0.5, body_timeout=0.5)
    try:
        with raw(w) as sock:
            started = time.monotonic()
            sock.sendall(b"POST /hooks/sg HTTP/1.1\r\nHost: x\r\n")  # the headers never end
            answer = read_answer(sock)
            assert answer.startswith(b"HTTP/1.1 400") and b"header_timeout" in answer
            assert time.monotonic() - started < 3
        with raw(w) as sock:
            sock.sendall(b"POST /hooks/sg HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[")  # 99 bytes never come
            answer = read_answer(sock)
            assert answer.startswith(b"HTTP/1.1 400") and b"body_timeout" in answer
        assert w.metric("sg", "too_slow") == 1
    finally:
        w.close()


def test_more_requests_at_once_than_max_concurrency_get_503(tmp_path):
    w = World(tmp_path, max_concurrency=2, header_timeout=5, body_timeout=5)
    try:
        host, port = w.receiver.url.removeprefix("http://").rsplit(":", 1)
        held = []
        for _ in range(2):  # two requests whose bodies are still coming hold both places
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"POST /hooks/sg HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n[")
            held.append(sock)
        time.sleep(0.3)
        answer = w.client.post("/hooks/sg", content=b"[]")
        assert answer.status_code == 503
        for sock in held:  # the two held requests were admitted: still waiting for their bodies
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                sock.recv(100)
            sock.close()
        time.sleep(0.3)
        assert w.client.post("/hooks/sg", content=b"[]").status_code == 401  # places free again
    finally:
        w.close()


# -- the hostile corpus --------------------------------------------------------------------------------


def test_a_corpus_of_hostile_requests_changes_nothing_and_raises_no_traceback(tmp_path, capfd, caplog):
    from concurrent.futures import ThreadPoolExecutor

    from .webhook_corpus import corpus, valid_requests

    w = World(tmp_path, header_timeout=0.5, body_timeout=0.5, max_concurrency=32)
    try:
        accepted = valid_requests()
        for name, request in accepted:
            assert w.post(name, request).status_code == 200
        before = w.snapshot()
        cases = list(corpus(accepted))
        assert len(cases) >= 200
        host, port = w.receiver.url.removeprefix("http://").rsplit(":", 1)
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda case: (case[0], case[1](host, int(port))), cases))
        assert w.snapshot() == before
        # Only an authentic sender's event of no known kind ({} from Postmark) is answered 200, with nothing kept.
        assert not [(label, s) for label, s in statuses
                    if (200 <= s < 300 and not label.startswith("authorised")) or s >= 500 and s != 503]
        by_label = {}
        for label, status in statuses:
            by_label.setdefault(label.split()[0], set()).add(status)
        assert by_label["forged"] == by_label["stale"] == by_label["unsigned"] == by_label["replayed"] == {401}
        assert by_label["oversized"] == by_label["chunked"] == by_label["declared"] == {413}
        assert by_label["slow"] == {400}
        refused = sum(w.metric(n, "unauthorized") for n in ("sg", "mg", "pm", "mc", "ses"))
        assert refused >= sum(1 for _, s in statuses if s == 401)
    finally:
        w.close()
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= 30]
    assert sign.MAILGUN_KEY not in out + err + caplog.text and sign.POSTMARK_PASSWORD not in caplog.text
    assert sign.MAILCHIMP_SECRET not in out + err + caplog.text


def test_answers_are_not_held_back_by_delayed_acknowledgements(world):
    # An answer's head and body are two writes: without TCP_NODELAY each request waits about 40 ms.
    world.client.get("/hooks/mc/x")
    started = time.perf_counter()
    for _ in range(30):
        assert world.client.get("/hooks/mc/x").status_code == 200
    assert time.perf_counter() - started < 0.8
