"""What every HTTP adapter sends its vendor, request by request, against a recording made before the adapter kit.

Each vendor adapter is driven through one fixed scenario against its fake: a
first incremental read, a second one from the saved cursor, a full read, an
apply of a fixed batch (its first write answered once with a 503, an early read
with a 429 and `Retry-After`), a lift and `check`. A recording transport keeps
every request as sent (method, path, query, parsed body, the non-secret
headers) and the adapter's own results. tests/data/wire/<vendor>.json holds
what the adapters did before their modules were moved onto adapters/kit.py
(Klaviyo's, written on the kit, as first recorded; Mailchimp's two incremental reads end with
the one re-subscribe read issue 17 added; SES's apply without the look-up of a spam complaint,
which issue 19 dropped); a refactor must not change one request. Re-record (only for a deliberate
change of behaviour) with OPTOUT_SYNC_RECORD_WIRE=1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from state.models import OptOut

from .fakes.clock import FakeClock

WIRE = Path(__file__).parent / "data" / "wire"
START = 1_700_000_000.0
# Headers that vary with the run or carry a secret; everything else a request carries is compared.
_SKIPPED_HEADERS = {"authorization", "user-agent", "host", "content-length", "x-amz-date",
                    "x-amz-security-token", "x-postmark-server-token", "accept-encoding", "connection"}

BATCH = [
    OptOut("wire-unsub@example.com", "*", "unsubscribed", "recipient", "2023-11-10T10:00:00Z"),
    OptOut("wire-topic@example.com", "newsletter", "unsubscribed", "recipient", "2023-11-10T11:00:00Z"),
    OptOut("wire-bounce@example.com", "*", "hard_bounce", "system", "2023-11-10T12:00:00Z"),
    OptOut("wire-spam@example.com", "*", "spam_complaint", "system", "2023-11-10T13:00:00Z"),
    OptOut("held-unsub@example.com", "*", "unsubscribed", "recipient", None),
    OptOut("wire-manual@example.com", "*", "manual", "user", "2023-11-10T14:00:00Z"),
]
LIFT = [
    OptOut("wire-manual@example.com", "*", "manual", "user", "2023-11-10T14:00:00Z"),
    OptOut("wire-topic@example.com", "newsletter", "unsubscribed", "user", "2023-11-10T11:00:00Z"),
]


class Recorder(httpx.BaseTransport):
    """Passes each request to a fake and keeps it; answers the n-th request with a scripted fault instead."""

    def __init__(self, handle: Callable[[httpx.Request], httpx.Response], secrets: list[str]):
        self.handle, self.secrets = handle, secrets
        self.sent: list[dict[str, Any]] = []
        self.faults: dict[str, list[httpx.Response]] = {}

    def fault_first(self, kind: str, response: httpx.Response) -> None:
        """Answer the next request of `kind` ("read": GET, "write": any other method) with `response`."""
        self.faults.setdefault(kind, []).append(response)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body: Any = request.read().decode() or None
        if body is not None:
            try:
                body = json.loads(body)
            except ValueError:
                pass
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() not in _SKIPPED_HEADERS}
        for secret in self.secrets:
            assert secret not in json.dumps([str(request.url), body, headers]), "a secret went out in the clear"
        self.sent.append({"method": request.method, "path": request.url.raw_path.decode().split("?")[0],
                          "query": sorted([k, v] for k, v in request.url.params.multi_items()),
                          "body": body, "headers": dict(sorted(headers.items()))})
        kind = "read" if request.method == "GET" else "write"
        if self.faults.get(kind):
            answer = self.faults[kind].pop(0)
            self.sent[-1]["answered"] = answer.status_code
            return answer
        return self.handle(request)


def _result(results) -> list[list[str]]:
    return [[r.optout.address, r.optout.scope, r.outcome, r.held_as or "", ",".join(r.fanned_out)]
            for r in results]


def _pages(pages) -> dict[str, Any]:
    optouts, rejected, cursors = [], [], []
    for page in pages:
        optouts += [[o.address, o.scope, o.reason, o.origin, o.occurred_at or ""] for o in page.optouts]
        rejected += [r.reason for r in page.rejected]
        cursors.append(page.cursor)
    return {"optouts": optouts, "rejected": rejected, "cursors": cursors}


def run_scenario(adapter, recorder: Recorder, clock: FakeClock) -> dict[str, Any]:
    """Drive one adapter through the fixed scenario; every request and result, in order."""
    steps: dict[str, Any] = {}

    def step(name: str, work: Callable[[], Any]) -> None:
        before = len(recorder.sent)
        try:
            outcome = work()
        except Exception as exc:  # an error is part of what is compared, by its type and text
            outcome = {"error": type(exc).__name__, "text": str(exc)}
        steps[name] = {"result": outcome, "requests": recorder.sent[before:]}
        clock.advance(60)

    recorder.fault_first("read", httpx.Response(429, headers={"Retry-After": "2"}, json={"message": "slow down"}))
    step("read_changes", lambda: _pages(adapter.read_changes(None)))
    cursor = steps["read_changes"]["result"]["cursors"][-1]
    step("read_changes_again", lambda: _pages(adapter.read_changes(cursor)))
    step("read_all", lambda: _pages(adapter.read_all()))
    recorder.fault_first("write", httpx.Response(503, json={"message": "try again"}))
    step("apply", lambda: _result(adapter.apply(list(BATCH))))
    step("remove", lambda: _result(adapter.remove(list(LIFT))))
    step("check", lambda: adapter.check())
    adapter.close()
    return steps


# -- one builder per vendor: the fake seeded with the same opt-outs, the adapter on the recorder -------------


def _hubspot(clock):
    from adapters.hubspot import HubSpotAdapter, HubSpotSettings
    from .fakes.hubspot import FakeHubSpot
    token = "pat-na1-wire-0000-secret"
    fake = FakeHubSpot(token, clock=clock)
    fake.recipient_unsubscribes_all("seen-unsub@example.com", at=int((START - 3600) * 1000))
    fake.recipient_unsubscribes("seen-topic@example.com", 101, at=int((START - 3000) * 1000))
    fake.bounce("seen-bounce@example.com", at=int((START - 2400) * 1000))
    fake.spam_report("seen-spam@example.com", at=int((START - 1800) * 1000))
    fake.recipient_unsubscribes_all("held-unsub@example.com", at=int((START - 1200) * 1000))
    recorder = Recorder(fake.handle, [token])
    config = HubSpotSettings.model_validate({
        "name": "hubspot", "token": token, "topics": {"newsletter": "101", "product": "102"},
        "legal_basis": "LEGITIMATE_INTEREST_OTHER", "legal_basis_explanation": "Recipient asked elsewhere",
        "backoff_initial": 1, "backoff_max": 4, "full_read_from": int((START - 86_400) * 1000)})
    return HubSpotAdapter(config, {"newsletter": "N", "product": "P"}, transport=recorder, clock=clock), recorder


def _sendgrid(clock):
    from adapters.sendgrid import SendGridAdapter, SendGridSettings
    from .fakes.sendgrid import FakeSendGrid
    key = "SG.wire-key.secret-part"
    fake = FakeSendGrid(key, clock=clock)
    fake.recipient_unsubscribes("seen-unsub@example.com", at=int(START - 3600))
    fake.recipient_leaves_group("seen-topic@example.com", 101, at=int(START - 3000))
    fake.bounce("seen-bounce@example.com", at=int(START - 2400))
    fake.spam_report("seen-spam@example.com", at=int(START - 1800))
    fake.recipient_unsubscribes("held-unsub@example.com", at=int(START - 1200))
    recorder = Recorder(fake.handle, [key])
    config = SendGridSettings(**{"name": "sendgrid", "api_key": key, "base_url": "https://api.sendgrid.test",
                                 "topics": {"newsletter": "101"}, "backoff_initial": 1, "backoff_max": 4})
    return SendGridAdapter(config, {"newsletter": "N"}, transport=recorder, clock=clock), recorder


def _mailchimp(clock):
    from adapters.mailchimp import MailchimpAdapter, MailchimpSettings
    from .fakes.mailchimp import FakeMailchimp
    key = "0123456789abcdef0123456789abcdef-us21"
    fake = FakeMailchimp(key, clock=clock)
    fake.recipient_unsubscribes("seen-unsub@example.com", at=START - 3600)
    fake.clean("seen-bounce@example.com", at=START - 2400)
    fake.abuse_report("seen-spam@example.com", at=START - 1800)
    fake.recipient_unsubscribes("held-unsub@example.com", at=START - 1200)
    for address in ("wire-unsub@example.com", "wire-bounce@example.com", "wire-manual@example.com"):
        fake.add_member(address, at=START - 7200)
    recorder = Recorder(fake.handle, [key])
    config = MailchimpSettings(**{"name": "mailchimp", "api_key": key, "list_id": "a1b2c3d4e5",
                                  "base_url": "https://us21.api.mailchimp.test/3.0", "backoff_initial": 1,
                                  # One look-up at a time, so that they reach the fake in the recorded order
                                  # (the default of 10 connections sends them in any order).
                                  "backoff_max": 4, "concurrent_requests": 1})
    return MailchimpAdapter(config, {"newsletter": "N"}, transport=recorder, clock=clock), recorder


def _mailgun(clock):
    from adapters.mailgun import MailgunAdapter, MailgunSettings
    from .fakes.mailgun import FakeMailgun
    key = "key-wire0123456789abcdef"
    fake = FakeMailgun(key, domains=("mg.example.com",), clock=clock)
    fake.recipient_unsubscribes("seen-unsub@example.com", at=START - 3600)
    fake.recipient_unsubscribes("seen-topic@example.com", ["Newsletter"], at=START - 3000)
    fake.bounce("seen-bounce@example.com", at=START - 2400)
    fake.complaint("seen-spam@example.com", at=START - 1800)
    fake.recipient_unsubscribes("held-unsub@example.com", at=START - 1200)
    recorder = Recorder(fake.handle, [key])
    config = MailgunSettings.model_validate({
        "name": "mailgun", "api_key": key, "domain": "mg.example.com", "topics": {"newsletter": "Newsletter"},
        "backoff_initial": 1, "backoff_max": 4})
    return MailgunAdapter(config, {"newsletter": "N"}, transport=recorder, clock=clock), recorder


def _postmark(clock):
    from adapters.postmark import PostmarkAdapter, PostmarkSettings
    from .fakes.postmark import FakePostmark
    token = "1a2b3c4d-wire-7a8b-9c0d-1e2f3a4b5c6d"
    fake = FakePostmark(token, clock=clock)
    fake.suppress("seen-unsub@example.com", "outbound", at=START - 3600)
    fake.suppress("seen-topic@example.com", "broadcast", at=START - 3000)
    fake.suppress("seen-bounce@example.com", "outbound", "HardBounce", "Recipient", at=START - 2400)
    fake.suppress("seen-spam@example.com", "outbound", "SpamComplaint", "Recipient", at=START - 1800)
    fake.suppress("held-unsub@example.com", "outbound", at=START - 1200)
    recorder = Recorder(fake.handle, [token])
    config = PostmarkSettings.model_validate({
        "name": "postmark", "server_token": token, "topics": {"newsletter": "broadcast"},
        "backoff_initial": 1, "backoff_max": 4})
    return PostmarkAdapter(config, {"newsletter": "N"}, transport=recorder, clock=clock), recorder


def _ses(clock):
    from adapters.ses import SesAdapter, SesSettings
    from .fakes.ses import FakeSes
    access, secret = "AKIAWIREWIREWIRE0001", "wire/secret/key/0123456789abcdef"
    fake = FakeSes(access, secret, "eu-west-1", clock=clock)
    fake.suppress("seen-bounce@example.com", "BOUNCE", at=START - 2400)
    fake.suppress("seen-spam@example.com", "COMPLAINT", at=START - 1800)
    fake.suppress("held-unsub@example.com", "BOUNCE", at=START - 1200)
    recorder = Recorder(fake.handle, [secret])
    config = SesSettings.model_validate({"name": "ses", "region": "eu-west-1", "access_key_id": access,
                                         "secret_access_key": secret, "backoff_initial": 1, "backoff_max": 4,
                                         "write_other_reasons_as": "BOUNCE"})
    return SesAdapter(config, {}, transport=recorder, clock=clock), recorder


def _klaviyo(clock):
    from adapters.klaviyo import KlaviyoAdapter, KlaviyoSettings
    from .fakes.klaviyo import FakeKlaviyo
    key = "pk_wire0123456789abcdef0123456789"
    fake = FakeKlaviyo(key, clock=clock)
    fake.suppress("seen-unsub@example.com", "UNSUBSCRIBE", at=START - 3600)
    fake.leave_list("seen-topic@example.com", "Y6nRLr", at=START - 3000)
    fake.suppress("seen-bounce@example.com", "HARD_BOUNCE", at=START - 2400)
    fake.suppress("seen-spam@example.com", "SPAM_COMPLAINT", at=START - 1800)
    fake.suppress("held-unsub@example.com", "UNSUBSCRIBE", at=START - 1200)
    recorder = Recorder(fake.handle, [key])
    config = KlaviyoSettings.model_validate({"name": "klaviyo", "api_key": key, "topics": {"newsletter": "Y6nRLr"},
                                             "backoff_initial": 1, "backoff_max": 4})
    return KlaviyoAdapter(config, {"newsletter": "N"}, transport=recorder, clock=clock), recorder


BUILDERS = {"hubspot": _hubspot, "klaviyo": _klaviyo, "sendgrid": _sendgrid, "mailchimp": _mailchimp, "mailgun": _mailgun,
            "postmark": _postmark, "ses": _ses}


def record(vendor: str) -> dict[str, Any]:
    """The scenario's requests and results for one vendor, as JSON-ready data."""
    clock = FakeClock(START)
    adapter, recorder = BUILDERS[vendor](clock)
    return json.loads(json.dumps(run_scenario(adapter, recorder, clock)))


@pytest.mark.parametrize("vendor", sorted(BUILDERS))
def test_each_vendor_receives_the_recorded_requests(vendor):
    path = WIRE / f"{vendor}.json"
    now = record(vendor)
    if os.environ.get("OPTOUT_SYNC_RECORD_WIRE") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    recorded = json.loads(path.read_text(encoding="utf-8"))
    for name, expected in recorded.items():
        got = now[name]
        for position, (want, sent) in enumerate(zip(expected["requests"], got["requests"])):
            assert sent == want, f"{vendor} {name}: request {position + 1} differs"
        assert len(got["requests"]) == len(expected["requests"]), f"{vendor} {name}: request count differs"
        assert got["result"] == expected["result"], f"{vendor} {name}: result differs"
    assert sorted(now) == sorted(recorded)
    # The scenario must have exercised writes, not only reads, for the comparison to mean anything.
    assert any(r["method"] != "GET" for r in recorded["apply"]["requests"])
