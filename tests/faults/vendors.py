"""One kit per HTTP adapter type: its fake, settings, fault profile, and how to seed and inspect the vendor.

The storm, fuzz and security tests are written once against this interface. Each fake is
subclassed only to count the effects API calls have (adds and removals), never to change answers.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from adapters.hubspot import HubSpotAdapter
from adapters.klaviyo import KlaviyoAdapter
from adapters.mailchimp import MailchimpAdapter
from adapters.mailgun import MailgunAdapter
from adapters.postmark import PostmarkAdapter
from adapters.sendgrid import SendGridAdapter
from adapters.ses import SesAdapter
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.klaviyo import FakeKlaviyo
from tests.fakes.mailchimp import FakeMailchimp, member_hash
from tests.fakes.mailgun import FakeMailgun
from tests.fakes.postmark import FakePostmark
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.ses import FakeSes

from .injector import Handle, VendorProfile

TOPICS = {"newsletter": "The newsletter"}
# What a seeded opt-out is at the vendor; each kit says how it makes one and which scope it becomes.
SEED_KINDS = ("unsubscribe", "topic", "bounce", "spam")


@dataclass
class Kit:
    """Everything the fault suite needs about one HTTP adapter type.

    `seed` makes one opt-out happen at the vendor and returns the (address, scope) the
    vendor now reports, or None when the vendor records no change (already held).
    `covers` says whether the vendor keeps mail of that scope from the address.
    `effects` counts the changes API calls made, keyed (address, what, "added"/"removed").
    """

    type: str
    token: str
    profile: VendorProfile
    make_fake: Callable[[Any, str], Any]                        # (clock, token) -> fake
    settings: Callable[[str, str, str], dict]                   # (name, base_url, token) -> adapter settings
    adapter_class: type
    seed: Callable[[Any, str, str, int], tuple[str, str] | None]  # (fake, address, kind, at_ms)
    covers: Callable[[Any, str, str], bool]
    effects: Callable[[Any], Counter]
    misuse: Callable[[Any], list[str]]                          # re-subscribes, created contacts, removals
    prepare: Callable[[Any, list[str]], None] = field(default=lambda fake, addresses: None)
    # Settings that make a read take several pages of 10 (for paging faults).
    small_pages: dict = field(default_factory=dict)
    # Sets the fake's own rate limit to n requests and returns its period in seconds (None: the fake has none).
    limit_fake: Callable[[Any, int], float] | None = None
    # True when the fake tells its remaining quota in headers the adapter reads.
    rate_headers: bool = False
    # True when an all-email write is held in every topic list too, and read back per topic as made
    # by a user (Postmark: one stream per topic); those redundant rows are counted, not hidden.
    fans_out: bool = False
    # True when a read takes several pages (paging faults apply).
    paged: bool = True

    def build(self, config, transport: httpx.BaseTransport, clock):
        """The adapter for validated settings, talking through `transport` on `clock`."""
        return self.adapter_class(config, TOPICS, transport=transport, clock=clock)


def _with_param(request: httpx.Request, **params: str | None) -> httpx.Request:
    url = request.url
    for key, value in params.items():
        url = url.copy_remove_param(key) if value is None else url.copy_set_param(key, value)
    return httpx.Request(request.method, url, headers=request.headers, content=request.content)


def _offset_pages(path_matches: Callable[[str], bool], offset_name: str, limit_name: str, items_of, with_items):
    """repeat_cursor, short_page and first_page for an API paged by offset and limit."""

    def repeat(request: httpx.Request, body: Any, handle: Handle) -> Any | None:
        offset = int(request.url.params.get(offset_name, 0) or 0)
        if not path_matches(request.url.path) or offset == 0:
            return None
        limit = int(request.url.params.get(limit_name, 0) or 0)
        previous = handle(_with_param(request, **{offset_name: str(max(0, offset - limit))}))
        return previous.json() if previous.is_success else None

    def short(request: httpx.Request, body: Any, handle: Handle) -> Any | None:
        items = items_of(body) if path_matches(request.url.path) else None
        if not items or len(items) < 2:
            return None
        return with_items(body, items[:len(items) // 2])

    def first(request: httpx.Request) -> httpx.Request | None:
        return _with_param(request, **{offset_name: "0"}) if path_matches(request.url.path) else None

    return repeat, short, first


def _effects_of(fake) -> Counter:
    return fake.effects


def _removals(fake) -> list[str]:
    return [f"{what} {address} removed" for (address, what, verdict) in fake.effects if verdict == "removed"]


def _set(fake, **attributes) -> None:
    for name, value in attributes.items():
        setattr(fake, name, value)


# -- HubSpot -------------------------------------------------------------------------------------------


def _hubspot_rate_limited(retry_after: str, now: float) -> httpx.Response:
    """HubSpot's 429 for the ten-secondly limit, with its rate-limit headers (tests/fakes/hubspot.py)."""
    return httpx.Response(429, json={
        "status": "error", "message": "You have reached your ten_secondly_rolling limit.",
        "errorType": "RATE_LIMIT", "correlationId": str(uuid.uuid4()), "policyName": "TEN_SECONDLY_ROLLING",
        "requestId": str(uuid.uuid4()), "category": "RATE_LIMITS"},
        headers={"Retry-After": retry_after, "X-HubSpot-RateLimit-Max": "100",
                 "X-HubSpot-RateLimit-Remaining": "0", "X-HubSpot-RateLimit-Interval-Milliseconds": "10000"})


def _timeline_position(request: httpx.Request) -> int | None:
    if not request.url.path.endswith("/subscriptions/timeline"):
        return None
    offset = request.url.params.get("offset")
    return int(base64.urlsafe_b64decode(offset.encode()).decode()) if offset else 0


def _hubspot_repeat_cursor(request: httpx.Request, body: Any, handle: Handle) -> Any | None:
    """A later timeline page names again the offset it was asked for (the first page has none to repeat)."""
    if not _timeline_position(request) or not isinstance(body, dict):
        return None
    return {**body, "hasMore": True, "offset": request.url.params["offset"]}


def _hubspot_short_page(request: httpx.Request, body: Any, handle: Handle) -> Any | None:
    """Half of the timeline page, with an offset that goes on right after the items it holds."""
    position = _timeline_position(request)
    if position is None or not isinstance(body, dict) or len(body.get("timeline") or []) < 2:
        return None
    kept = body["timeline"][:len(body["timeline"]) // 2]
    offset = base64.urlsafe_b64encode(str(position + len(kept)).encode()).decode()
    return {**body, "timeline": kept, "hasMore": True, "offset": offset}


def _hubspot_first_page(request: httpx.Request) -> httpx.Request | None:
    return _with_param(request, offset=None) if _timeline_position(request) is not None else None


class CountingHubSpot(FakeHubSpot):
    """The HubSpot fake; its timeline already records every change, so effects are read from it."""

    @property
    def effects(self) -> Counter:
        effects: Counter = Counter()
        for item in self.timeline:
            for change in item["changes"]:
                if change.get("source") == "SOURCE_INTEGRATION":
                    what = "*" if change["changeType"] == "PORTAL_STATUS" else f"sub{change.get('subscriptionId')}"
                    verdict = "added" if change["change"] == "UNSUBSCRIBED" else "removed"
                    effects[(item["recipient"], what, verdict)] += 1
        return effects


def _hubspot_seed(fake: FakeHubSpot, address: str, kind: str, at: int) -> tuple[str, str] | None:
    before = len(fake.timeline)
    if kind == "unsubscribe":
        fake.recipient_unsubscribes_all(address, at=at)
        pair = (address, "*")
    elif kind == "topic":
        fake.recipient_unsubscribes(address, 101, at=at)
        pair = (address, "newsletter")
    elif kind == "bounce":
        fake.bounce(address, at=at)
        pair = (address, "*")
    else:
        fake.spam_report(address, at=at)
        pair = (address, "*")
    # HubSpot records no change (and so reports nothing) for a topic opt-out under an all-email one.
    return pair if len(fake.timeline) > before else None


def _hubspot_covers(fake: FakeHubSpot, address: str, scope: str) -> bool:
    prefs = fake.prefs.get(address)
    if prefs is None:
        return False
    if scope == "*":
        return 0 in prefs.wide or prefs.bounced or prefs.spam
    return prefs.subs.get(101, {}).get("status") == "UNSUBSCRIBED"


def _hubspot_misuse(fake: FakeHubSpot) -> list[str]:
    problems = [f"subscribe through {where}" for where, _ in fake.api_subscribes]
    problems += [f"contact {cid} created" for cid in fake.contacts]
    problems += [f"{r.method} {r.path}" for r in fake.requests if "/communication-preferences/v3/" in r.path]
    return problems


HUBSPOT = Kit(
    "hubspot", "pat-na1-faults-0000-1111-2222-333333333333",
    VendorProfile("hubspot", _hubspot_rate_limited, _hubspot_repeat_cursor, _hubspot_short_page,
                  _hubspot_first_page),
    lambda clock, token: CountingHubSpot(token, clock=clock),
    lambda name, base_url, token: {"name": name, "type": "hubspot", "token": token, "base_url": base_url,
                                   "topics": {"newsletter": "101"}, "initial_lookback": None,
                                   "timeline_page_size": 1000, "max_new_per_cycle": 1_000_000},
    HubSpotAdapter, _hubspot_seed, _hubspot_covers, _effects_of, _hubspot_misuse,
    small_pages={"timeline_page_size": 10}, limit_fake=lambda fake, n: _set(fake, rate_limit=n) or 10.0,
    rate_headers=True)


# -- SendGrid ------------------------------------------------------------------------------------------


def _sendgrid_rate_limited(retry_after: str, now: float) -> httpx.Response:
    """SendGrid's 429: its errors body and X-RateLimit-* headers, the reset as unix time."""
    return httpx.Response(429, json={"errors": [{"field": None, "message": "too many requests"}]},
                          headers={"Retry-After": retry_after, "X-RateLimit-Limit": "600",
                                   "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(now) + 2)})


class CountingSendGrid(FakeSendGrid):
    """The SendGrid fake, counting each suppression API calls add or remove."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.effects: Counter = Counter()

    def _held(self) -> set[tuple[str, str]]:
        return {(e, "*") for e in self.lists["unsubscribes"]} | {
            (e, f"group{g}") for g, members in self.group_suppressions.items() for e in members}

    def _counted(self, call, *args):
        before = self._held()
        response = call(*args)
        after = self._held()
        for key in after - before:
            self.effects[(*key, "added")] += 1
        for key in before - after:
            self.effects[(*key, "removed")] += 1
        return response

    def _add_global(self, params, body):
        return self._counted(super()._add_global, params, body)

    def _add_to_group(self, params, body, group_id):
        return self._counted(super()._add_to_group, params, body, group_id)

    def _delete_global(self, params, body, email):
        return self._counted(super()._delete_global, params, body, email)

    def _delete_from_group(self, params, body, group_id, email):
        return self._counted(super()._delete_from_group, params, body, group_id, email)


def _sendgrid_seed(fake: FakeSendGrid, address: str, kind: str, at: int) -> tuple[str, str] | None:
    seconds = at // 1000
    if kind == "topic":
        if address in fake.group_suppressions[101]:
            return None
        fake.recipient_leaves_group(address, 101, at=seconds)
        return address, "newsletter"
    list_name = {"unsubscribe": "unsubscribes", "bounce": "bounces", "spam": "spam_reports"}[kind]
    if address in fake.lists[list_name]:
        return None
    {"unsubscribes": fake.recipient_unsubscribes, "bounces": fake.bounce,
     "spam_reports": fake.spam_report}[list_name](address, at=seconds)
    return address, "*"


def _sendgrid_covers(fake: FakeSendGrid, address: str, scope: str) -> bool:
    everywhere = any(address in fake.lists[n] for n in ("unsubscribes", "bounces", "spam_reports"))
    return everywhere or (scope == "newsletter" and address in fake.group_suppressions[101])


_sendgrid_list = lambda path: path.startswith("/v3/suppression/")  # noqa: E731
_SENDGRID_PAGES = _offset_pages(_sendgrid_list, "offset", "limit",
                                lambda body: body if isinstance(body, list) else None, lambda body, items: items)

SENDGRID = Kit(
    "sendgrid", "SG.faults-key.0123456789abcdefghijklmnopqrstuvwxyz",
    VendorProfile("sendgrid", _sendgrid_rate_limited, *_SENDGRID_PAGES),
    lambda clock, token: CountingSendGrid(token, clock=clock),
    lambda name, base_url, token: {"name": name, "type": "sendgrid", "api_key": token, "base_url": base_url,
                                   "topics": {"newsletter": "101"}, "max_new_per_cycle": 1_000_000},
    SendGridAdapter, _sendgrid_seed, _sendgrid_covers, _effects_of, _removals,
    # Small enough that each seeded list spans several pages (a short page ends a SendGrid list).
    small_pages={"page_size": 4}, limit_fake=lambda fake, n: _set(fake, rate_limit=n, rate_period=1.0) or 1.0,
    rate_headers=True)


# -- Mailgun -------------------------------------------------------------------------------------------

MAILGUN_DOMAIN = "mg.example.com"


def _mailgun_rate_limited(retry_after: str, now: float) -> httpx.Response:
    """Mailgun's 429: {"message"} only, and Retry-After."""
    return httpx.Response(429, json={"message": "Too many requests"}, headers={"Retry-After": retry_after})


def _mailgun_list(path: str) -> bool:
    return path.rstrip("/").rsplit("/", 1)[-1] in ("unsubscribes", "bounces", "complaints") and "/v3/" in path


def _mailgun_repeat_cursor(request: httpx.Request, body: Any, handle: Handle) -> Any | None:
    """The page's paging.next names the page just read again."""
    if not _mailgun_list(request.url.path) or not isinstance(body, dict) or not body.get("items"):
        return None
    return {**body, "paging": {**body.get("paging", {}), "next": str(request.url)}}


def _mailgun_short_page(request: httpx.Request, body: Any, handle: Handle) -> Any | None:
    """Half of the items, with paging.next going on after the last one kept."""
    if not _mailgun_list(request.url.path) or not isinstance(body, dict) or len(body.get("items") or []) < 2:
        return None
    kept = body["items"][:len(body["items"]) // 2]
    parts = urlsplit(str(request.url))
    query = urlencode({"page": "next", "address": kept[-1]["address"],
                       "limit": request.url.params.get("limit", "100")})
    return {**body, "items": kept, "paging": {**body["paging"], "next": f"{parts.scheme}://{parts.netloc}"
                                                                        f"{parts.path}?{query}"}}


def _mailgun_first_page(request: httpx.Request) -> httpx.Request | None:
    if not _mailgun_list(request.url.path):
        return None
    return _with_param(request, page=None, address=None)


class CountingMailgun(FakeMailgun):
    """The Mailgun fake, counting each unsubscribe tag, bounce or complaint API calls add or remove."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.effects: Counter = Counter()

    @staticmethod
    def _held(list_name: str, records: dict, addresses: set[str]) -> set[tuple[str, str]]:
        held = set()
        for address in addresses & set(records):
            tags = records[address].get("tags", []) if list_name == "unsubscribes" else [list_name]
            held |= {(address, str(tag).lower()) for tag in tags}
        return held

    def _add(self, list_name, records, body):
        items = body if isinstance(body, list) else [body]
        addresses = {str(i.get("address", "")).strip().lower() for i in items if isinstance(i, dict)}
        before = self._held(list_name, records, addresses)
        response = super()._add(list_name, records, body)
        for key in self._held(list_name, records, addresses) - before:
            self.effects[(*key, "added")] += 1
        return response

    def _delete(self, list_name, records, address, tag):
        before = self._held(list_name, records, {address})
        response = super()._delete(list_name, records, address, tag)
        for key in before - self._held(list_name, records, {address}):
            self.effects[(*key, "removed")] += 1
        return response


def _mailgun_seed(fake: FakeMailgun, address: str, kind: str, at: int) -> tuple[str, str] | None:
    seconds = at / 1000
    if kind in ("unsubscribe", "topic"):
        tag = "*" if kind == "unsubscribe" else "newsletter"
        if tag in fake.tags_of(address):
            return None
        fake.recipient_unsubscribes(address, [tag], at=seconds)
        return address, "*" if tag == "*" else "newsletter"
    records = fake.domains[MAILGUN_DOMAIN]["bounces" if kind == "bounce" else "complaints"]
    if address in records:
        return None
    (fake.bounce if kind == "bounce" else fake.complaint)(address, at=seconds)
    return address, "*"


def _mailgun_covers(fake: FakeMailgun, address: str, scope: str) -> bool:
    lists = fake.domains[MAILGUN_DOMAIN]
    tags = {t.lower() for t in fake.tags_of(address)}
    if address in lists["bounces"] or address in lists["complaints"] or "*" in tags:
        return True
    return scope == "newsletter" and "newsletter" in tags


MAILGUN = Kit(
    "mailgun", "key-faults-0123456789abcdef0123456789ab",
    VendorProfile("mailgun", _mailgun_rate_limited, _mailgun_repeat_cursor, _mailgun_short_page,
                  _mailgun_first_page),
    lambda clock, token: CountingMailgun(token, domains=(MAILGUN_DOMAIN,), clock=clock),
    lambda name, base_url, token: {"name": name, "type": "mailgun", "api_key": token, "base_url": base_url,
                                   "domain": MAILGUN_DOMAIN, "topics": {"newsletter": "newsletter"},
                                   "max_pages_per_cycle": 10_000, "max_new_per_cycle": 1_000_000},
    MailgunAdapter, _mailgun_seed, _mailgun_covers, _effects_of, _removals,
    small_pages={"page_size": 10}, limit_fake=lambda fake, n: _set(fake, rate_limit=n) or 1.0)


# -- Postmark ------------------------------------------------------------------------------------------


def _postmark_rate_limited(retry_after: str, now: float) -> httpx.Response:
    """Postmark's 429: {ErrorCode: 429, Message}, and Retry-After."""
    return httpx.Response(429, json={"ErrorCode": 429, "Message": "Rate limit exceeded"},
                          headers={"Retry-After": retry_after})


class CountingPostmark(FakePostmark):
    """The Postmark fake, counting each suppression API calls add or remove."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.effects: Counter = Counter()

    def _counted(self, call, stream, body):
        before = set(self.suppressions[stream])
        response = call(stream, body)
        after = set(self.suppressions[stream])
        for address in after - before:
            self.effects[(address, stream, "added")] += 1
        for address in before - after:
            self.effects[(address, stream, "removed")] += 1
        return response

    def _create(self, stream, body):
        return self._counted(super()._create, stream, body)

    def _delete(self, stream, body):
        return self._counted(super()._delete, stream, body)


def _postmark_seed(fake: FakePostmark, address: str, kind: str, at: int) -> tuple[str, str] | None:
    stream = "broadcast" if kind == "topic" else "outbound"
    if address in fake.suppressions[stream]:
        return None
    reason = {"bounce": "HardBounce", "spam": "SpamComplaint"}.get(kind, "ManualSuppression")
    fake.suppress(address, stream, reason, "Recipient", at=at / 1000)
    return address, "newsletter" if kind == "topic" else "*"


def _postmark_covers(fake: FakePostmark, address: str, scope: str) -> bool:
    if address in fake.suppressions["outbound"]:
        return True
    return scope == "newsletter" and address in fake.suppressions["broadcast"]


POSTMARK = Kit(
    "postmark", "pm-faults-00000000-1111-2222-3333-444444444444",
    VendorProfile("postmark", _postmark_rate_limited),
    lambda clock, token: CountingPostmark(token, clock=clock),
    lambda name, base_url, token: {"name": name, "type": "postmark", "server_token": token, "base_url": base_url,
                                   "topics": {"newsletter": "broadcast"}, "max_new_per_cycle": 1_000_000},
    PostmarkAdapter, _postmark_seed, _postmark_covers, _effects_of, _removals,
    small_pages={"page_size": 10}, limit_fake=lambda fake, n: _set(fake, rate_limit=n) or 1.0, fans_out=True, paged=False)


# -- Mailchimp -----------------------------------------------------------------------------------------

MAILCHIMP_LIST = "a1b2c3d4e5"


def _mailchimp_rate_limited(retry_after: str, now: float) -> httpx.Response:
    """Mailchimp's 429 as problem+json (it sends no rate-limit headers), with Retry-After."""
    return httpx.Response(429, json={
        "type": "https://mailchimp.com/developer/marketing/docs/errors/", "title": "Too Many Requests",
        "status": 429, "detail": "You have exceeded the limit of 10 simultaneous connections.",
        "instance": str(uuid.uuid4())}, headers={"Retry-After": retry_after,
                                                 "Content-Type": "application/problem+json"})


def _mailchimp_list(path: str) -> bool:
    return path.endswith("/members") or path.endswith("/abuse-reports")


def _mailchimp_items(body: Any) -> list | None:
    if not isinstance(body, dict):
        return None
    items = body.get("members", body.get("abuse_reports"))
    return items if isinstance(items, list) else None


def _mailchimp_with_items(body: dict, items: list) -> dict:
    key = "members" if "members" in body else "abuse_reports"
    return {**body, key: items}  # total_items still promises the full count


class CountingMailchimp(FakeMailchimp):
    """The Mailchimp fake, counting each member status change API calls make."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.effects: Counter = Counter()

    def _write_member(self, list_id, email, status, *, create):
        member = self.members[list_id].get(member_hash(email))
        before = member["status"] if member else None
        written = super()._write_member(list_id, email, status, create=create)
        if written is not None and written["status"] != before:
            self.effects[(email.lower(), written["status"], "added")] += 1
        return written


def _mailchimp_prepare(fake: FakeMailchimp, addresses: list[str]) -> None:
    """Everyone is a subscribed member first, so opt-outs from elsewhere have someone to unsubscribe."""
    for address in addresses:
        fake.add_member(address, at=fake.clock() - 40 * 86_400)


def _mailchimp_seed(fake: FakeMailchimp, address: str, kind: str, at: int) -> tuple[str, str] | None:
    if fake.status_of(address) in ("unsubscribed", "cleaned"):
        return None
    seconds = at / 1000
    if kind == "bounce":
        fake.clean(address, at=seconds)
    elif kind == "spam":
        fake.abuse_report(address, at=seconds)
    else:  # the audience stands for all email: a topic unsubscribe is an unsubscribe here
        fake.recipient_unsubscribes(address, at=seconds)
    return address, "*"


def _mailchimp_covers(fake: FakeMailchimp, address: str, scope: str) -> bool:
    # A `*` audience cannot hold a topic (the engine skips it under the default unmapped policy).
    return scope != "*" or fake.status_of(address) in (None, "unsubscribed", "cleaned", "archived")


MAILCHIMP = Kit(
    "mailchimp", "0123456789abcdef0123456789faults-us21",
    VendorProfile("mailchimp", _mailchimp_rate_limited,
                  *_offset_pages(_mailchimp_list, "offset", "count", _mailchimp_items, _mailchimp_with_items)),
    lambda clock, token: CountingMailchimp(token, audiences={MAILCHIMP_LIST: "Customers"}, clock=clock),
    lambda name, base_url, token: {"name": name, "type": "mailchimp", "api_key": token,
                                   "base_url": base_url + "/3.0", "list_id": MAILCHIMP_LIST,
                                   "max_new_per_cycle": 1_000_000},
    MailchimpAdapter, _mailchimp_seed, _mailchimp_covers, _effects_of,
    lambda fake: [f"subscribe write {e}" for e in fake.subscribe_writes]
    + [f"member {e} created" for e in fake.created_by_api] + [f"member {e} deleted" for e in fake.deletes],
    _mailchimp_prepare, small_pages={"page_size": 10})

# -- Amazon SES -----------------------------------------------------------------------------------------

SES_ACCESS_KEY, SES_REGION = "AKIAFAULTSFAULTS0001", "eu-west-1"


def _ses_rate_limited(retry_after: str, now: float) -> httpx.Response:
    """SES's throttling answer: x-amzn-ErrorType and {"message"}, and Retry-After."""
    return httpx.Response(429, json={"message": "Too Many Requests"},
                          headers={"x-amzn-ErrorType": "TooManyRequestsException:", "Retry-After": retry_after})


def _ses_list(request: httpx.Request) -> bool:
    return request.method == "GET" and request.url.path == "/v2/email/suppression/addresses"


def _ses_repeat_cursor(request: httpx.Request, body: Any, handle: Handle) -> Any | None:
    """A later page names again the NextToken it was asked with (requests are signed: only answers change)."""
    token = request.url.params.get("NextToken")
    if not _ses_list(request) or not token or not isinstance(body, dict):
        return None
    return {**body, "NextToken": token}


def _ses_short_page(request: httpx.Request, body: Any, handle: Handle) -> Any | None:
    """Half of the page, with a NextToken that goes on right after the items it holds."""
    items = body.get("SuppressedDestinationSummaries") if isinstance(body, dict) else None
    if not _ses_list(request) or not isinstance(items, list) or len(items) < 2:
        return None
    token = request.url.params.get("NextToken")
    start = int(base64.b64decode(token).decode()) if token else 0
    kept = items[:len(items) // 2]
    return {**body, "SuppressedDestinationSummaries": kept,
            "NextToken": base64.b64encode(str(start + len(kept)).encode()).decode()}


class CountingSes(FakeSes):
    """The SES fake, counting each suppression API calls add or remove."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.effects: Counter = Counter()

    def _put(self, body):
        before = set(self.entries)
        response = super()._put(body)
        for address in set(self.entries) - before:
            self.effects[(address, "*", "added")] += 1
        return response

    def _handle(self, request):
        before = set(self.entries)
        response = super()._handle(request)
        if request.method == "DELETE":
            for address in before - set(self.entries):
                self.effects[(address, "*", "removed")] += 1
        return response


def _ses_seed(fake: FakeSes, address: str, kind: str, at: int) -> tuple[str, str] | None:
    # SES keeps bounces and complaints only: a recipient's unsubscribe never reaches its list.
    if kind not in ("bounce", "spam") or address in fake.entries:
        return None
    fake.suppress(address, "BOUNCE" if kind == "bounce" else "COMPLAINT", at=at / 1000)
    return address, "*"


SES = Kit(
    "ses", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYFAULTSKEY",
    VendorProfile("ses", _ses_rate_limited, _ses_repeat_cursor, _ses_short_page),
    lambda clock, token: CountingSes(SES_ACCESS_KEY, token, SES_REGION, clock=clock),
    lambda name, base_url, token: {"name": name, "type": "ses", "region": SES_REGION, "base_url": base_url,
                                   "access_key_id": SES_ACCESS_KEY, "secret_access_key": token,
                                   "write_other_reasons_as": "COMPLAINT", "max_new_per_cycle": 1_000_000},
    SesAdapter, _ses_seed, lambda fake, address, scope: scope != "*" or address in fake.entries, _effects_of,
    _removals, small_pages={"page_size": 3})


# -- Klaviyo -------------------------------------------------------------------------------------------

KLAVIYO_LIST = "Y6nRLr"


def _klaviyo_rate_limited(retry_after: str, now: float) -> httpx.Response:
    """Klaviyo's 429: a JSON:API errors body, and Retry-After (no RateLimit-* headers on a 429)."""
    return httpx.Response(429, json={"errors": [{"id": str(uuid.uuid4()), "status": 429, "code": "throttled",
                                                 "title": "Request was throttled.", "detail": "Request was throttled."}]},
                          headers={"Retry-After": retry_after})


def _klaviyo_page(request: httpx.Request) -> bool:
    return request.method == "GET" and request.url.path.rstrip("/") == "/api/profiles" and \
        request.url.params.get("filter", "").startswith("greater-than(")


def _klaviyo_repeat_cursor(request: httpx.Request, body: Any, handle: Handle) -> Any | None:
    """A later page's links.next names again the page just read."""
    if not _klaviyo_page(request) or not request.url.params.get("page[cursor]") or not isinstance(body, dict):
        return None
    return {**body, "links": {**(body.get("links") or {}), "next": str(request.url)}}


def _klaviyo_short_page(request: httpx.Request, body: Any, handle: Handle) -> Any | None:
    """Half of the profiles, with links.next going on right after the ones kept."""
    items = body.get("data") if isinstance(body, dict) else None
    if not _klaviyo_page(request) or not isinstance(items, list) or len(items) < 2:
        return None
    cursor = request.url.params.get("page[cursor]")
    start = int(base64.b64decode(cursor).decode()) if cursor else 0
    kept = items[:len(items) // 2]
    following = request.url.copy_set_param("page[cursor]", base64.b64encode(str(start + len(kept)).encode()).decode())
    return {**body, "data": kept, "links": {**(body.get("links") or {}), "next": str(following)}}


def _klaviyo_first_page(request: httpx.Request) -> httpx.Request | None:
    return _with_param(request, **{"page[cursor]": None}) if _klaviyo_page(request) else None


class CountingKlaviyo(FakeKlaviyo):
    """The Klaviyo fake, counting each suppression or list suppression API jobs add or remove."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.effects: Counter = Counter()

    def _held(self) -> set[tuple[str, str]]:
        return {(email, "*") for email, p in self.profiles.items() if p["suppression"]} | {
            (email, s["list_id"]) for email, p in self.profiles.items() for s in p["list_suppressions"]}

    def _counted(self, call, params, body):
        before = self._held()
        response = call(params, body)
        after = self._held()
        for key in after - before:
            self.effects[(*key, "added")] += 1
        for key in before - after:
            self.effects[(*key, "removed")] += 1
        return response

    def _suppress_job(self, params, body):
        return self._counted(super()._suppress_job, params, body)

    def _unsuppress_job(self, params, body):
        return self._counted(super()._unsuppress_job, params, body)

    def _unsubscribe_job(self, params, body):
        return self._counted(super()._unsubscribe_job, params, body)


def _klaviyo_seed(fake: FakeKlaviyo, address: str, kind: str, at: int) -> tuple[str, str] | None:
    if kind == "topic":
        if KLAVIYO_LIST in fake.lists_of(address):
            return None
        fake.leave_list(address, KLAVIYO_LIST, at=at / 1000)
        return address, "newsletter"
    reason = {"unsubscribe": "UNSUBSCRIBE", "bounce": "HARD_BOUNCE", "spam": "SPAM_COMPLAINT"}[kind]
    if reason in fake.reasons_of(address):
        return None
    fake.suppress(address, reason, at=at / 1000)
    return address, "*"


def _klaviyo_covers(fake: FakeKlaviyo, address: str, scope: str) -> bool:
    return bool(fake.reasons_of(address)) or (scope == "newsletter" and KLAVIYO_LIST in fake.lists_of(address))


def _klaviyo_misuse(fake: FakeKlaviyo) -> list[str]:
    subscribes = [f"{r.method} {r.path}" for r in fake.requests if "subscription-bulk-create" in r.path]
    return subscribes + _removals(fake)


KLAVIYO = Kit(
    "klaviyo", "pk_faults0123456789abcdef0123456789",
    VendorProfile("klaviyo", _klaviyo_rate_limited, _klaviyo_repeat_cursor, _klaviyo_short_page,
                  _klaviyo_first_page),
    lambda clock, token: CountingKlaviyo(token, clock=clock),
    lambda name, base_url, token: {"name": name, "type": "klaviyo", "api_key": token, "base_url": base_url,
                                   "topics": {"newsletter": KLAVIYO_LIST}, "max_new_per_cycle": 1_000_000},
    KlaviyoAdapter, _klaviyo_seed, _klaviyo_covers, _effects_of, _klaviyo_misuse,
    small_pages={"page_size": 10}, limit_fake=lambda fake, n: _set(fake, steady=n) or 60.0, rate_headers=True)

KITS: dict[str, Kit] = {kit.type: kit for kit in (HUBSPOT, SENDGRID, MAILGUN, POSTMARK, MAILCHIMP, SES, KLAVIYO)}
