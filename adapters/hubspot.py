"""`hubspot`: two-way opt-out sync with HubSpot's per-address communication preferences.

Facts come from ../shared/specs/hubspot.md; every limit it marks unconfirmed is a setting.

Incremental read: the v1 subscription timeline (newest first), read from the
saved millisecond cursor minus an overlap (changes can show up late) to now, as
one window paged with the timeline's own `offset`/`hasMore` (a first run of an
empty portal is one call); `timeline_window` can split a long read into
windows. The cursor moves to a window's end only once the whole window is read,
since newest-first pages cannot move it part-way. Opt-outs in the overlap are
read again (the store makes repeats harmless); history lines, re-subscribes
and listed problems there are not repeated.

Full read (reconcile): the same timeline from the beginning, with each page's
opt-outs confirmed against current v4 statuses (batch reads) so that what is
reported is what HubSpot holds now. Chosen over CRM search on
`hs_email_optout*` because (1) opt-outs belong to addresses, and the addresses
this daemon writes often have no contact, which search cannot see; (2) the
timeline and v4 statuses are documented, the search property names are not;
(3) search is limited to 4 calls/s and 10,000 results per query. Without the
batch scopes the timeline's opt-outs are reported unconfirmed, since one call
per address would not finish. Bounces and spam reports have no v4 status and
are reported as the timeline gives them.

Writes: v4 unsubscribe-all (all email) and v4 status writes with
statusState=UNSUBSCRIBED (topics), batch endpoints while the token has the batch
scopes (a 403 switches to one call per address), batch size halved on a 400
naming a limit. It never subscribes, never creates a contact and never calls
v3. A lift can remove topic opt-outs only (statusState=NOT_SPECIFIED); HubSpot
has no undo for an unsubscribe from all email.

What it remembers (its `memory`, kept in the store by the engine): a 403 on a
batch read or write, with its time, so a new process goes straight to single
calls instead of spending another 403. It asks again once `batch_recheck_every`
(1 day) has passed (an account upgraded to Enterprise gets batches back), and
forgets the answer when a single call is refused too (401/403): the token or
its scopes changed, so the old answer says nothing.

Quota facts (C = confirmed, with where; I = inferred, hence a setting):
- C: burst limit 100 per 10 s (Free/Starter), 190 (Professional, Enterprise),
  250 with the capacity pack; daily 250k/650k/1M (developers.hubspot.com/apisbytier,
  changelog "Increasing our API limits"). The limit is per app per account for
  OAuth apps (changelog "New and improved HubSpot API limits").
- I: that the account's other integrations draw on the same burst budget (the
  daily limit is account-wide; third-party guides say the burst is too). So
  the default pacing is 40 % of the smallest limit: 40 per 10 s.
- C: CRM search allows 4 requests per second (changelog "CRM Search API rate limit
  increase"; "Burst limits are increasing..." says search "will remain limited to 4
  requests per second") and is outside the 10-second bucket (the search operation's
  x-hubspot-rate-limit-exemptions, per ../shared/specs/hubspot.md). Later
  third-party sources say 5 per second per account: not confirmed, so 4.
- I: that HubSpot counts a call when it arrives. Searches are paced at 4 per
  1.25 s when sent, leaving 0.25 s for network jitter.
- C: a 429 body looks like {"status":"error","message":"You have reached your
  daily limit.","errorType":"RATE_LIMIT","correlationId":..,"policyName":"DAILY",
  "requestId":..}, and "the message and policyName will indicate which limit you
  hit" (the usage guidelines, as quoted on community.hubspot.com). HubSpot's own
  Node client (@hubspot/api-client RetryDecorator) retries policyName
  TEN_SECONDLY_ROLLING after 10 s and the message "You have reached your secondly
  limit." (search) after 1 s. So a 429 is classified by policyName, else by its
  message; the ten-secondly limit is waited out whole (Retry-After, else
  X-HubSpot-RateLimit-Interval-Milliseconds, else 10 s), the secondly one for
  1 s, and the daily one parks until the next cycle.
- I: the policyName value SECONDLY for search, and whether Retry-After is ever
  sent (honoured when present).
- C: the timeline pages with `offset` and `limit`, newest first; `offset` is
  opaque and "not meant to be long-lived"; startTimestamp/endTimestamp bound it
  (developers.hubspot.com/docs/methods/email/get_subscriptions_timeline). I: the
  largest `limit` (timeline_page_size 100) and how long an offset lives
  (timeline_window can keep each read short).

Re-subscribes (issue 17): HubSpot says who made one. A timeline change back to SUBSCRIBED carries
its `source` (confirmed: the v1 timeline reference's own example, SOURCE_RECIPIENT), so it is read
as a Resubscribe with that source, the change's time and `causedByEvent.id` as evidence, by the
incremental read and by the full read (so a reconcile learns of it before it diffs); the store
decides whether it releases the opt-out. Details and what is inferred: RESUBSCRIBED_BY at the end
of this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from state.addresses import InvalidAddress, normalise_address
from state.errors import ConfigError, TransientError
from state.models import (
    ALREADY,
    APPLIED,
    GLOBAL_SCOPE,
    ORIGINS,
    PERMANENT,
    REASONS,
    TRANSIENT,
    ApplyResult,
    OptOut,
    Page,
    Rejected,
    Resubscribe,
    to_utc_iso,
)

from .base import AdapterMemory, Capabilities, Duration, chunks
from .http import (
    explain_refusal,
    VendorAnswer,
    Clock,
    HttpAdapterSettings,
    HttpClient,
    RetryBudgetSpent,
    VendorError,
    VendorPermanentError,
    generic_pause_hint,
    parse_retry_after,
)

LegalBasis = Literal["CONSENT_WITH_NOTICE", "LEGITIMATE_INTEREST_CLIENT", "LEGITIMATE_INTEREST_OTHER",
                     "LEGITIMATE_INTEREST_PQL", "NON_GDPR", "PERFORMANCE_OF_CONTRACT", "PROCESS_AND_STORE"]

# Timeline `source` -> "origin/reason" of a status change. Unknown sources count as the
# recipient's own, the most binding origin, so nobody can lift what a recipient may have made.
DEFAULT_SOURCES = {
    "SOURCE_RECIPIENT": "recipient/unsubscribed",
    "SOURCE_HUBSPOT_CUSTOMER": "user/manual",
    "SOURCE_IMPORT": "user/imported",
    "SOURCE_INTEGRATION": "user/imported",
    "SOURCE_API": "user/imported",
    "SOURCE_NON_DELIVERY_REPORT": "system/hard_bounce",
    "SOURCE_SPAM_REPORT": "system/spam_complaint",
}
# Change values of a bounce or spam-report change that take it back rather than record it.
UNDO_CHANGES = frozenset({"SUBSCRIBED", "UNBOUNCED", "UNREPORTED", "REMOVED"})
_LIMIT_WORDS = re.compile(r"\b(limit|maximum|max|too many|exceed\w*)\b", re.IGNORECASE)

TIMELINE = "/email/public/v1/subscriptions/timeline"
V4 = "/communication-preferences/v4"
SEARCH = "/crm/v3/objects/contacts/search"
ARCHIVE = "/crm/v3/objects/contacts/batch/archive"
DAY = 86_400.0


def _origin_reason(value: str) -> str:
    origin, _, reason = value.partition("/")
    if origin not in ORIGINS or reason not in REASONS:
        raise ValueError(f"expected 'origin/reason' with origin one of {', '.join(ORIGINS)} and reason one of "
                         f"{', '.join(REASONS)}, got {value!r}")
    return value


class HubSpotSettings(HttpAdapterSettings):
    """Settings of a `hubspot` adapter instance (one per business unit)."""

    type: Literal["hubspot"] = "hubspot"
    base_url: str = "https://api.hubapi.com"
    token: SecretStr = Field(
        description="The access token of a HubSpot private app with the communication preferences scopes.")
    business_unit_id: int = Field(default=0, ge=0)
    legal_basis: LegalBasis | None = None
    legal_basis_explanation: str | None = Field(default=None, max_length=1000)
    # HubSpot publishes no batch maximum: 100 is a guess, halved on a 400 naming a limit.
    batch_size: int = Field(default=100, ge=1, le=1000)
    batch_endpoints: bool = True
    # How long a remembered "no batch scopes" holds before one batch call asks again.
    batch_recheck_every: Duration = DAY
    # 40 % of the smallest burst limit (100 per 10 s, Free/Starter), which the account's
    # other integrations also draw on; see docs/adapters.md.
    rate_limit_requests: int = Field(default=40, ge=1)
    rate_limit_period: Duration = 10.0
    # HubSpot allows 4 searches a second, counted when they arrive: 4 per 1.25 s sent
    # leaves a quarter of a second for network jitter.
    search_rate_limit_requests: int = Field(default=4, ge=1)
    search_rate_limit_period: Duration = 1.25
    overlap: Duration = 600.0
    initial_lookback: Duration | None = 30 * DAY
    # None: one window from the cursor to now, paged with the timeline's own offset.
    timeline_window: Duration | None = None
    timeline_page_size: int = Field(default=100, ge=1, le=1000)
    full_read_from: int = Field(default=0, ge=0)  # ms since epoch where a full read starts
    full_read_confirm: bool = True
    search_page_size: int = Field(default=200, ge=1, le=200)
    search_in_values: int = Field(default=100, ge=1, le=500)
    contact_batch_size: int = Field(default=100, ge=1, le=1000)
    sources: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_SOURCES))
    unknown_source: str = "recipient/unsubscribed"

    @field_validator("topics")
    @classmethod
    def _subscription_ids(cls, topics: dict[str, str]) -> dict[str, str]:
        for topic, subscription in topics.items():
            if not str(subscription).strip().isdigit():
                raise ValueError(f"topic {topic!r}: HubSpot subscription ids are integers, got {subscription!r}")
        return {topic: str(subscription).strip() for topic, subscription in topics.items()}

    @field_validator("sources")
    @classmethod
    def _sources(cls, sources: dict[str, str]) -> dict[str, str]:
        return {source: _origin_reason(value) for source, value in sources.items()}

    @field_validator("unknown_source")
    @classmethod
    def _unknown_source(cls, value: str) -> str:
        return _origin_reason(value)

    @model_validator(mode="after")
    def _explanation_needs_basis(self) -> "HubSpotSettings":
        if self.legal_basis_explanation and not self.legal_basis:
            raise ValueError("legal_basis_explanation is set but legal_basis is not")
        return self


# -- HubSpot's answers, as far as this adapter relies on them ---------------------------------


_Answer = VendorAnswer  # the shared base: unknown fields ignored, ids as text


class StandardError(_Answer):
    message: str = ""
    category: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)


class PublicStatus(_Answer):
    subscriberIdString: str
    subscriptionId: int
    status: str
    setStatusSuccessReason: str | None = None


class StatusEnvelope(_Answer):
    status: str
    results: list[PublicStatus]
    errors: list[StandardError] = Field(default_factory=list)


class BulkStatuses(_Answer):
    subscriberIdString: str
    statuses: list[PublicStatus] = Field(default_factory=list)


class BulkStatusesEnvelope(_Answer):
    status: str
    results: list[BulkStatuses]
    errors: list[StandardError] = Field(default_factory=list)


class WideStatus(_Answer):
    status: str
    wideStatusType: str | None = None
    businessUnitId: int | None = None


class BulkWide(_Answer):
    subscriberIdString: str
    wideStatuses: list[WideStatus] = Field(default_factory=list)


class BulkWideEnvelope(_Answer):
    status: str
    results: list[BulkWide]
    errors: list[StandardError] = Field(default_factory=list)


class TimelineChange(_Answer):
    change: str
    changeType: str
    source: str | None = None
    subscriptionId: str | None = None
    businessUnitId: int | None = None
    timestamp: int | None = None
    causedByEvent: dict[str, Any] | None = None


class TimelineItem(_Answer):
    timestamp: int
    recipient: str
    changes: list[TimelineChange]


class TimelinePage(_Answer):
    hasMore: bool
    offset: str | None = None
    timeline: list[TimelineItem]


class Definition(_Answer):
    id: str
    name: str
    businessUnitId: int | None = None
    isActive: bool | None = None


class DefinitionsEnvelope(_Answer):
    results: list[Definition]


class SearchHit(_Answer):
    id: str
    properties: dict[str, str | None] = Field(default_factory=dict)


class SearchNext(_Answer):
    after: str


class SearchPaging(_Answer):
    next: SearchNext | None = None


class SearchPage(_Answer):
    results: list[SearchHit]
    paging: SearchPaging | None = None


class UnexpectedAnswer(VendorPermanentError):
    """A 2xx answer that this adapter cannot read: an adapter-level failure, never an item's."""


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    """The outcome of archiving (deleting) one contact."""

    contact_id: str
    ok: bool
    message: str


# -- error and rate-limit reading ---------------------------------------------------------------


# HubSpot's rate-limit policies, as a 429 body names them in `policyName` (see the module docstring).
TEN_SECONDLY = "TEN_SECONDLY_ROLLING"
SECONDLY = "SECONDLY"
DAILY = "DAILY"
TEN_SECONDLY_WAIT = 10.0  # the rolling burst window: after this long every call that filled it has left it
SECONDLY_WAIT = 1.0       # the search API's window


def rate_limit_policy(body: dict) -> str | None:
    """Which HubSpot limit a 429 body names: its `policyName`, else read from its message; None if neither says."""
    policy = str(body.get("policyName") or "").strip().upper()
    if policy in (TEN_SECONDLY, SECONDLY, DAILY):
        return policy
    # Older answers and some endpoints give only the message ("You have reached your
    # ten_secondly_rolling limit." / "... secondly limit." / "... daily limit."). The
    # ten-secondly test comes first: its message also contains the word "secondly".
    message = str(body.get("message") or "").lower()
    if "ten_secondly" in message or "ten secondly" in message:
        return TEN_SECONDLY
    if "daily" in message:
        return DAILY
    if "secondly" in message:
        return SECONDLY
    return policy or None


def hubspot_error(response: httpx.Response, now: float) -> VendorError:
    """HubSpot's Error body (message, category, correlationId, errors[]), and how long a 429 asks to wait.

    A 429 is classified by the limit its body names: the rolling 10-second burst
    limit is waited out whole (Retry-After, else the window HubSpot's headers
    give, else 10 s), the search API's per-second limit for 1 s, and the daily
    limit is not retried in this cycle.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    message = str(body.get("message") or response.reason_phrase or "no message")
    details = [str(e.get("message")) for e in body.get("errors") or [] if isinstance(e, dict) and e.get("message")]
    if details:
        message += " (" + "; ".join(details[:3]) + ")"
    category = body.get("category") or body.get("errorType")
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    retry = True
    if response.status_code == 429:
        policy = rate_limit_policy(body)
        if policy == DAILY:
            retry = False  # the daily quota resets at midnight in the account's time zone; park, do not spin
        elif retry_after is None and policy == TEN_SECONDLY:
            interval = _number(response.headers.get("x-hubspot-ratelimit-interval-milliseconds"))
            retry_after = interval / 1000 if interval else TEN_SECONDLY_WAIT
        elif retry_after is None and policy == SECONDLY:
            retry_after = SECONDLY_WAIT
    correlation = body.get("correlationId") or body.get("requestId")
    return VendorError(message, str(category) if category else None, str(correlation) if correlation else None,
                       retry_after, retry)


def hubspot_pause_hint(response: httpx.Response, now: float) -> float | None:
    """Hold back when HubSpot's rate-limit headers say this window is used up (headers are optional)."""
    headers = response.headers
    if _number(headers.get("x-hubspot-ratelimit-remaining")) == 0:
        return (_number(headers.get("x-hubspot-ratelimit-interval-milliseconds")) or 10_000) / 1000
    if _number(headers.get("x-hubspot-ratelimit-secondly-remaining")) == 0:
        return 1.0
    return generic_pause_hint(response, now)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _ms_to_iso(ms: int) -> str:
    return to_utc_iso(datetime.fromtimestamp(ms / 1000, timezone.utc))




# -- the adapter ---------------------------------------------------------------------------------


class HubSpotAdapter:
    """Reads opt-outs from HubSpot's subscription timeline and writes them as v4 preferences."""

    settings_model = HubSpotSettings

    def __init__(self, settings: HubSpotSettings, topics: dict[str, str],
                 transport: httpx.BaseTransport | None = None, clock: Clock | None = None):
        undefined = sorted(set(settings.topics) - set(topics))
        if undefined:
            raise ValueError(f"topics {', '.join(undefined)} are not defined under [topics]")
        self.settings = settings
        self.name = settings.name
        self._subscription_of = {topic: int(sid) for topic, sid in settings.topics.items()}
        self._topic_of = {str(sid): topic for topic, sid in self._subscription_of.items()}
        self.capabilities = Capabilities(read_changes=True, read_all=True, write=True, remove=True,
                                         batch_size=settings.batch_size, scopes=frozenset(settings.topics))
        token = settings.token.get_secret_value()
        self.http = HttpClient(
            settings.name, settings, headers={"Authorization": f"Bearer {token}"},
            buckets={"search": (settings.search_rate_limit_requests, settings.search_rate_limit_period)},
            describe_error=hubspot_error, pause_hint=hubspot_pause_hint, transport=transport, clock=clock,
            secrets=[token])
        self.clock = self.http.clock
        self._chunk_size = settings.batch_size
        # Remembered across processes (the engine loads and saves it): a 403 on a batch call,
        # so that a new process does not spend another 403 finding out again.
        self.memory = AdapterMemory()
        self._legal = {key: value for key, value in (("legalBasis", settings.legal_basis),
                                                     ("legalBasisExplanation", settings.legal_basis_explanation))
                       if value}

    def __repr__(self) -> str:
        return (f"HubSpotAdapter(name={self.name!r}, base_url={self.settings.base_url!r}, "
                f"business_unit_id={self.settings.business_unit_id})")

    # -- reading -------------------------------------------------------------------------------

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        """Timeline changes since the cursor (minus the overlap), window by window, oldest window first."""
        self.http.new_cycle()
        now = self._now_ms()
        previous = self._cursor_ms(cursor)
        lookback = self.settings.initial_lookback
        if previous is None and lookback is None:
            windows: Iterator[tuple[int, int]] = iter([(0, now)])
        else:
            start = (previous - int(self.settings.overlap * 1000) if previous is not None
                     else now - int(lookback * 1000))
            windows = self._windows(max(0, start), now)
        for window_start, window_end in windows:
            window_had_data = False
            for answer, last in self._timeline(window_start, window_end):
                page = Page()
                for item in answer.timeline:
                    self._convert(item, page, seen_up_to=previous)
                has_data = bool(page.optouts or page.notices or page.rejected or page.resubscribes)
                window_had_data = window_had_data or has_data
                if last:
                    page.cursor = str(window_end)
                # An empty window moves the cursor only as part of the last one: one save, not one per day.
                if has_data or (last and (window_had_data or window_end == now)):
                    yield page

    def read_all(self) -> Iterator[Page]:
        """Every opt-out HubSpot holds now, page by page (see the module docstring for how)."""
        self.http.new_cycle()
        for answer, _ in self._timeline(self.settings.full_read_from, self._now_ms()):
            page = Page()
            for item in answer.timeline:
                self._convert(item, page, seen_up_to=None)
            optouts = self._confirmed(page.optouts)
            if optouts or page.resubscribes:  # re-subscribes: read before the diff re-applies anything
                yield Page(optouts, resubscribes=page.resubscribes)

    def _windows(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        end = max(start, end)
        if not self.settings.timeline_window:
            yield start, end  # one window; the timeline's offset pages through it
            return
        width = max(1, int(self.settings.timeline_window * 1000))
        while start <= end:
            stop = min(start + width - 1, end)
            yield start, stop
            start = stop + 1

    def _timeline(self, start: int, end: int) -> Iterator[tuple[TimelinePage, bool]]:
        """Pages of the timeline between two inclusive ms bounds, newest first; (page, is_last)."""
        endpoint = f"GET {TIMELINE}"
        offset: str | None = None
        offsets_seen: set[str] = set()
        while True:
            params: dict[str, Any] = {"startTimestamp": start, "endTimestamp": end,
                                      "limit": self.settings.timeline_page_size}
            if offset:
                params["offset"] = offset
            answer = self._parse(self.http.request("GET", TIMELINE, endpoint=endpoint, params=params),
                                 TimelinePage, endpoint)
            if answer.hasMore and (not answer.offset or answer.offset in offsets_seen):
                raise UnexpectedAnswer(self.name, endpoint, "the answer says hasMore but gives no new offset",
                                       status=200)
            yield answer, not answer.hasMore
            if not answer.hasMore:
                return
            offsets_seen.add(answer.offset)
            offset = answer.offset

    def _convert(self, item: TimelineItem, page: Page, seen_up_to: int | None) -> None:
        """Turn one timeline item's changes into opt-outs, history notices or listed problems."""
        try:
            address = normalise_address(item.recipient)
        except InvalidAddress as exc:
            if seen_up_to is None or item.timestamp > seen_up_to:
                page.rejected.append(Rejected(f"timeline item at {item.timestamp}", item.recipient,
                                              f"invalid address {item.recipient!r}: {exc}"))
            return
        for change in item.changes:
            moment = change.timestamp or item.timestamp
            # Re-read in the overlap: opt-outs again (harmless), history and problems not twice.
            fresh = seen_up_to is None or moment > seen_up_to
            details = {"hubspot_change": change.change, "hubspot_change_type": change.changeType,
                       "hubspot_source": change.source}
            if change.causedByEvent and change.causedByEvent.get("id"):
                details["hubspot_event_id"] = str(change.causedByEvent["id"])
            resubscribe = resubscribe_of(change, address,
                                         resubscribe_scope(change, self.settings.business_unit_id, self._topic_of),
                                         moment)
            if resubscribe is not None:
                if fresh:
                    page.resubscribes.append(resubscribe)
                continue
            kind, value = self._classify(change)
            if kind == "optout":
                scope, reason, origin = value
                page.optouts.append(OptOut(address, scope, reason, origin, _ms_to_iso(moment), details))
            elif kind == "notice" and fresh:
                scope, reason, origin, message = value
                page.notices.append(OptOut(address, scope, reason, origin, _ms_to_iso(moment),
                                           {**details, "message": message}))
            elif kind == "rejected" and fresh:
                page.rejected.append(Rejected(f"timeline change at {moment}", address, f"{address}: {value}"))

    def _classify(self, change: TimelineChange) -> tuple[str, Any]:
        kind, what = change.changeType, change.change
        origin, reason = self._source(change.source)
        seen = f"HubSpot reports {what} ({kind}, {change.source or 'no source'}); no suppression removed"
        if kind == "PORTAL_BOUNCE":
            if what == "BOUNCED":
                return "optout", (GLOBAL_SCOPE, "hard_bounce", "system")
            return "notice", (GLOBAL_SCOPE, "hard_bounce", "system", seen)
        if kind in ("PORTAL_SPAM_REPORT", "SUBSCRIPTION_SPAM_REPORT"):
            # A spam complaint anywhere suppresses everywhere, whatever the subscription.
            if what in UNDO_CHANGES:
                return "notice", (GLOBAL_SCOPE, "spam_complaint", "system", seen)
            return "optout", (GLOBAL_SCOPE, "spam_complaint", "system")
        if kind == "PORTAL_STATUS":
            unit = change.businessUnitId
            if unit is not None and unit != self.settings.business_unit_id:
                return "notice", (GLOBAL_SCOPE, reason, origin,
                                  f"HubSpot reports {what} for all email of business unit {unit}, which another "
                                  "adapter instance serves; nothing changed here")
            if what == "UNSUBSCRIBED":
                return "optout", (GLOBAL_SCOPE, reason, origin)
            return "notice", (GLOBAL_SCOPE, reason, origin, seen)
        if kind == "SUBSCRIPTION_STATUS":
            topic = self._topic_of.get(str(change.subscriptionId))
            if what == "UNSUBSCRIBED":
                if topic is None:
                    return "rejected", (f"unsubscribed from HubSpot subscription {change.subscriptionId}, which no "
                                        f"topic maps to at {self.name}; map it under topics to sync it")
                return "optout", (topic, reason, origin)
            if topic is None:
                return "ignored", None
            return "notice", (topic, reason, origin, seen)
        return "rejected", f"unknown HubSpot change type {kind} ({what}); not applied"

    def _source(self, source: str | None) -> tuple[str, str]:
        value = self.settings.sources.get(source or "", self.settings.unknown_source)
        origin, _, reason = value.partition("/")
        return origin, reason

    def _confirmed(self, optouts: list[OptOut]) -> list[OptOut]:
        """Keep the timeline's unsubscribes that v4 says still hold (all of them without batch reads)."""
        if not optouts or not self.settings.full_read_confirm or not self._batch_allowed("read"):
            return optouts
        wide_candidates = sorted({o.address for o in optouts if o.scope == GLOBAL_SCOPE and _is_status(o)})
        topic_candidates = sorted({o.address for o in optouts if o.scope != GLOBAL_SCOPE})
        try:
            wide = self._opted_out_of_all(wide_candidates)
            held = self._unsubscribed_topics(topic_candidates)
        except VendorPermanentError as exc:
            if exc.status != 403 or isinstance(exc, UnexpectedAnswer):
                raise
            self._batch_refused("read")
            return optouts
        self._batch_granted("read")
        kept = []
        for optout in optouts:
            if not _is_status(optout):
                kept.append(optout)
            elif optout.scope == GLOBAL_SCOPE:
                if optout.address in wide:
                    kept.append(optout)
            elif self._subscription_of[optout.scope] in held.get(optout.address, ()):
                kept.append(optout)
        return kept

    def _opted_out_of_all(self, addresses: list[str]) -> set[str]:
        path = f"{V4}/statuses/batch/unsubscribe-all/read"
        endpoint = f"POST {path}"
        out: set[str] = set()
        for chunk in chunks(addresses, self._chunk_size):
            answer = self._parse(self.http.request("POST", path, endpoint=endpoint, params=self._unit_params(),
                                                   json={"inputs": list(chunk)}), BulkWideEnvelope, endpoint)
            for result in answer.results:
                if any(w.status == "UNSUBSCRIBED" and (w.wideStatusType == "PORTAL_WIDE" or w.businessUnitId
                                                        in (None, self.settings.business_unit_id))
                       for w in result.wideStatuses):
                    out.add(result.subscriberIdString.strip().lower())
        return out

    def _unsubscribed_topics(self, addresses: list[str]) -> dict[str, set[int]]:
        path = f"{V4}/statuses/batch/read"
        endpoint = f"POST {path}"
        out: dict[str, set[int]] = {}
        for chunk in chunks(addresses, self._chunk_size):
            answer = self._parse(self.http.request("POST", path, endpoint=endpoint, params=self._unit_params(),
                                                   json={"inputs": list(chunk)}), BulkStatusesEnvelope, endpoint)
            for result in answer.results:
                out[result.subscriberIdString.strip().lower()] = {
                    s.subscriptionId for s in result.statuses if s.status == "UNSUBSCRIBED"}
        return out

    # -- writing -------------------------------------------------------------------------------

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Opt each address out at HubSpot (all email or one subscription); one result per item, in order."""
        return self._write(batch, "UNSUBSCRIBED")

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        """For an audited lift: topic opt-outs go back to NOT_SPECIFIED; all-email ones cannot be undone here."""
        return self._write(batch, "NOT_SPECIFIED")

    def _write(self, batch: list[OptOut], state: str) -> list[ApplyResult]:
        self.http.new_cycle()
        results: list[ApplyResult | None] = [None] * len(batch)
        wide, topics = [], []
        for index, optout in enumerate(batch):
            if optout.scope == GLOBAL_SCOPE:
                if state == "UNSUBSCRIBED":
                    wide.append(index)
                else:
                    results[index] = ApplyResult(optout, PERMANENT, (
                        "HubSpot has no way to undo an unsubscribe from all email short of re-subscribing, which "
                        "this daemon never does; the recipient or a HubSpot user must change it in HubSpot"))
            elif optout.scope in self._subscription_of:
                topics.append(index)
            else:
                results[index] = ApplyResult(optout, PERMANENT,
                                             f"topic {optout.scope!r} has no HubSpot subscription id at {self.name}")
        if wide:
            self._send(batch, wide, results, self._unsubscribe_all_batch, self._unsubscribe_all_one)
        if topics:
            self._send(batch, topics, results, lambda items: self._status_batch(items, state),
                       lambda optout: self._status_one(optout, state))
        done = [r for r in results if r is not None]
        if len(done) != len(batch):
            raise UnexpectedAnswer(self.name, "apply", "some items got no outcome", status=None)
        if done and all(r.outcome == TRANSIENT for r in done):
            # Nothing got through within this cycle's retry budget: the engine parks the whole batch.
            raise TransientError(f"{self.name}: no item of the batch could be sent: {done[0].message}")
        return done

    def _send(self, batch: list[OptOut], indexes: list[int], results: list[ApplyResult | None],
              batch_call: Callable[[list[OptOut]], list[ApplyResult | None]],
              single_call: Callable[[OptOut], ApplyResult]) -> None:
        pending = list(indexes)
        while pending:
            if not self._batch_allowed("write"):
                self._send_singly(batch, pending, results, single_call)
                return
            chunk = pending[:self._chunk_size]
            try:
                outcomes = batch_call([batch[i] for i in chunk])
            except UnexpectedAnswer:
                raise
            except VendorPermanentError as exc:
                if exc.status == 403:
                    self._batch_refused("write")  # no batch scopes (Marketing Hub Enterprise): one call each
                    continue
                if exc.status == 400 and _LIMIT_WORDS.search(exc.vendor_message) and self._chunk_size > 1:
                    self._chunk_size = max(1, self._chunk_size // 2)
                    continue
                if exc.status in (400, 404, 422):
                    # Something in the batch is refused: one call each finds which, and only it fails.
                    self._send_singly(batch, chunk, results, single_call)
                    pending = pending[len(chunk):]
                    continue
                raise
            except TransientError as exc:
                for index in pending:
                    results[index] = ApplyResult(batch[index], TRANSIENT, str(exc))
                return
            self._batch_granted("write")
            unreported = []
            for index, outcome in zip(chunk, outcomes):
                if outcome is None:
                    unreported.append(index)
                else:
                    results[index] = outcome
            if unreported:
                # The batch answer said nothing about these: ask about each one.
                self._send_singly(batch, unreported, results, single_call)
            pending = pending[len(chunk):]

    def _send_singly(self, batch: list[OptOut], indexes: list[int], results: list[ApplyResult | None],
                     single_call: Callable[[OptOut], ApplyResult]) -> None:
        for position, index in enumerate(indexes):
            optout = batch[index]
            try:
                results[index] = single_call(optout)
            except UnexpectedAnswer:
                raise
            except VendorPermanentError as exc:
                if exc.status in (401, 403):
                    # Even the single call is refused: the token or its scopes changed, so what
                    # was learnt about the batch endpoints no longer holds; the next cycle asks again.
                    self._forget_batch_answers()
                    raise  # bad credentials or scopes: the adapter, not this address
                if exc.status is None:
                    raise
                results[index] = ApplyResult(optout, PERMANENT, str(exc))
            except RetryBudgetSpent as exc:
                for rest in indexes[position:]:
                    results[rest] = ApplyResult(batch[rest], TRANSIENT, str(exc))
                return
            except TransientError as exc:
                results[index] = ApplyResult(optout, TRANSIENT, str(exc))

    def _unsubscribe_all_batch(self, items: list[OptOut]) -> list[ApplyResult | None]:
        path = f"{V4}/statuses/batch/unsubscribe-all"
        endpoint = f"POST {path}"
        answer = self._parse(self.http.request("POST", path, endpoint=endpoint,
                                               params={**self._unit_params(), "verbose": "true"},
                                               json={"inputs": [o.address for o in items]}),
                             BulkStatusesEnvelope, endpoint)
        reported = {r.subscriberIdString.strip().lower(): r.statuses for r in answer.results}
        refused = self._refusals(answer.errors, items, endpoint)
        return [self._wide_outcome(o, reported[o.address]) if o.address in reported
                else refused.get(o.address) for o in items]

    def _unsubscribe_all_one(self, optout: OptOut) -> ApplyResult:
        path = f"{V4}/statuses/{quote(optout.address, safe='@')}/unsubscribe-all"
        endpoint = f"POST {V4}/statuses/{{email}}/unsubscribe-all"
        answer = self._parse(self.http.request("POST", path, endpoint=endpoint,
                                               params={**self._unit_params(), "verbose": "true"}),
                             StatusEnvelope, endpoint)
        return self._wide_outcome(optout, answer.results)

    def _status_batch(self, items: list[OptOut], state: str) -> list[ApplyResult | None]:
        path = f"{V4}/statuses/batch/write"
        endpoint = f"POST {path}"
        inputs = [{"subscriberIdString": o.address, "channel": "EMAIL", "statusState": state,
                   "subscriptionId": self._subscription_of[o.scope], **self._legal} for o in items]
        answer = self._parse(self.http.request("POST", path, endpoint=endpoint, json={"inputs": inputs}),
                             StatusEnvelope, endpoint)
        reported = {(s.subscriberIdString.strip().lower(), s.subscriptionId): s for s in answer.results}
        refused = self._refusals(answer.errors, items, endpoint)
        outcomes: list[ApplyResult | None] = []
        for optout in items:
            status = reported.get((optout.address, self._subscription_of[optout.scope]))
            outcomes.append(self._topic_outcome(optout, status, state) if status else refused.get(optout.address))
        return outcomes

    def _status_one(self, optout: OptOut, state: str) -> ApplyResult:
        path = f"{V4}/statuses/{quote(optout.address, safe='@')}"
        endpoint = f"POST {V4}/statuses/{{email}}"
        subscription = self._subscription_of[optout.scope]
        answer = self._parse(self.http.request("POST", path, endpoint=endpoint, json={
            "channel": "EMAIL", "statusState": state, "subscriptionId": subscription, **self._legal}),
            StatusEnvelope, endpoint)
        for status in answer.results:
            if status.subscriptionId == subscription:
                return self._topic_outcome(optout, status, state)
        raise UnexpectedAnswer(self.name, endpoint, f"the answer does not mention subscription {subscription}",
                               status=200)

    def _wide_outcome(self, optout: OptOut, statuses: list[PublicStatus]) -> ApplyResult:
        if statuses and all(s.setStatusSuccessReason == "NO_STATUS_CHANGE" for s in statuses):
            return ApplyResult(optout, ALREADY, "HubSpot: NO_STATUS_CHANGE")
        # Unsubscribe-all also sets each subscription type it changed to UNSUBSCRIBED: reading one
        # of those back is this write's echo, not a topic opt-out of its own.
        fanned = tuple(sorted({self._topic_of[str(s.subscriptionId)] for s in statuses
                               if str(s.subscriptionId) in self._topic_of
                               and s.setStatusSuccessReason != "NO_STATUS_CHANGE"}))
        return ApplyResult(optout, APPLIED, fanned_out=fanned)

    def _topic_outcome(self, optout: OptOut, status: PublicStatus, state: str) -> ApplyResult:
        if status.status != state:
            return ApplyResult(optout, PERMANENT, f"HubSpot reports {status.status} for subscription "
                                                  f"{status.subscriptionId} after a write of {state}")
        if status.setStatusSuccessReason == "NO_STATUS_CHANGE":
            return ApplyResult(optout, ALREADY, "HubSpot: NO_STATUS_CHANGE")
        return ApplyResult(optout, APPLIED)

    def _refusals(self, errors: list[StandardError], items: list[OptOut], endpoint: str) -> dict[str, ApplyResult]:
        """Per-address results for the errors of a 207 answer, matched through their context or message."""
        wanted = {o.address: o for o in items}
        refused: dict[str, ApplyResult] = {}
        for error in errors:
            named = {str(v).strip().lower() for values in error.context.values()
                     for v in (values if isinstance(values, list) else [values])}
            named |= {a for a in wanted if a in error.message.lower()}
            for address in named & set(wanted):
                refused[address] = ApplyResult(wanted[address], PERMANENT, self.http._scrub(
                    f"{self.name}: {endpoint} refused it: {error.category or 'error'}: {error.message}"))
        return refused

    # -- contacts (clean-up of bounced and spam-reporting contacts) ---------------------------------

    def find_contact_ids(self, addresses: Sequence[str]) -> dict[str, list[str]]:
        """Contact ids per address, through CRM search (`email IN [...]`); addresses without a contact are absent."""
        self.http.new_cycle()
        endpoint = f"POST {SEARCH}"
        found: dict[str, list[str]] = {}
        for chunk in chunks(sorted(set(addresses)), self.settings.search_in_values):
            wanted = set(chunk)
            after: str | None = None
            while True:
                body: dict[str, Any] = {
                    "filterGroups": [{"filters": [{"propertyName": "email", "operator": "IN", "values": list(chunk)}]}],
                    "properties": ["email"], "limit": self.settings.search_page_size,
                    "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]}
                if after:
                    body["after"] = after
                answer = self._parse(self.http.request("POST", SEARCH, endpoint=endpoint, bucket="search",
                                                       json=body), SearchPage, endpoint)
                for hit in answer.results:
                    email = (hit.properties.get("email") or "").strip().lower()
                    if email in wanted and hit.id not in found.get(email, []):
                        found.setdefault(email, []).append(hit.id)
                if not (answer.paging and answer.paging.next):
                    break
                if answer.paging.next.after == after:
                    raise UnexpectedAnswer(self.name, endpoint, "paging.next.after repeats the last cursor",
                                           status=200)
                after = answer.paging.next.after
        return found

    def archive_contacts(self, contact_ids: Sequence[str]) -> list[ArchiveResult]:
        """Archive (delete) contacts in batches; their per-address opt-outs stay at HubSpot."""
        self.http.new_cycle()
        endpoint = f"POST {ARCHIVE}"
        results: list[ArchiveResult] = []
        pending = list(contact_ids)
        size = self.settings.contact_batch_size
        while pending:
            part = pending[:size]
            try:
                self.http.request("POST", ARCHIVE, endpoint=endpoint, json={"inputs": [{"id": i} for i in part]})
            except VendorPermanentError as exc:
                if exc.status == 400 and _LIMIT_WORDS.search(exc.vendor_message) and size > 1:
                    size = max(1, size // 2)
                    continue
                if exc.status in (401, 403) or exc.status is None:
                    raise
                results += [ArchiveResult(i, False, str(exc)) for i in part]
            except TransientError as exc:
                results += [ArchiveResult(i, False, str(exc)) for i in pending]
                return results
            else:
                results += [ArchiveResult(i, True, "archived") for i in part]
            pending = pending[len(part):]
        return results

    # -- operator checks --------------------------------------------------------------------------

    def check(self) -> list[str]:
        """List the business unit's subscription types, flag unmapped ones, and probe scopes; changes nothing."""
        self.http.new_cycle()
        unit = self.settings.business_unit_id
        endpoint = f"GET {V4}/definitions"
        definitions = self._parse(self.http.request("GET", f"{V4}/definitions", endpoint=endpoint,
                                                    params={"businessUnitId": unit}),
                                  DefinitionsEnvelope, endpoint).results
        known = {d.id: d for d in definitions}
        lines = [f"business unit {unit}: {len(definitions)} subscription types"]
        problems = []
        for topic, subscription in sorted(self.settings.topics.items()):
            if subscription in known:
                lines.append(f"topic {topic} -> subscription {subscription} ({known[subscription].name})")
            else:
                problems.append(f"topic {topic} maps to subscription {subscription}, which business unit {unit} "
                                "does not have")
        mapped = set(self.settings.topics.values())
        for definition in definitions:
            if definition.id not in mapped:
                lines.append(f"UNMAPPED: subscription {definition.id} ({definition.name}); its unsubscribes are "
                             "listed as rejected until a topic maps to it")
        if problems:
            raise ConfigError(f"{self.name}: " + "; ".join(problems))
        self.http.request("GET", TIMELINE, endpoint=f"GET {TIMELINE}", params={"limit": 1})
        lines.append("subscription timeline: readable")
        lines.append(self._probe_batch())
        return lines

    def probe_refusal(self, exc: BaseException) -> str | None:
        """Why a check() probe was refused: the token, or the OAuth scope it lacks (named by HubSpot if it says)."""
        named = re.search(r"scopes are required: \[([^\]]*)\]", str(getattr(exc, "vendor_message", "")))
        endpoint = str(getattr(exc, "endpoint", ""))
        scope = (named.group(1).replace("'", "") if named else "content" if TIMELINE in endpoint
                 else "communication_preferences.read_write" if "/communication-preferences/" in endpoint
                 else "crm.objects.contacts.read" if "/crm/" in endpoint else None)
        return explain_refusal(exc, "token", scope and f"OAuth scope {scope} (add it to the private app)")

    def _probe_batch(self) -> str:
        path = f"{V4}/statuses/batch/unsubscribe-all/read"
        try:
            self.http.request("POST", path, endpoint=f"POST {path}", params=self._unit_params(), json={"inputs": []})
        except VendorPermanentError as exc:
            if exc.status == 403:
                self._batch_refused("read")
                return "batch endpoints: not allowed for this token (one call per address; slower)"
            return f"batch endpoints: could not tell ({exc.vendor_message})"
        return "batch endpoints: available"

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    # -- what this token may call (remembered across processes) ---------------------------------------

    def _batch_allowed(self, kind: str) -> bool:
        """False while a 403 on a batch `kind` ("read"/"write") call is remembered and not yet due a re-check."""
        if not self.settings.batch_endpoints:
            return False
        refused_at = _number(self.memory.get(f"batch_{kind}_refused_at"))
        return refused_at is None or self.clock.time() - refused_at >= self.settings.batch_recheck_every

    def _batch_refused(self, kind: str) -> None:
        self.memory.set(f"batch_{kind}_refused_at", str(int(self.clock.time())))

    def _batch_granted(self, kind: str) -> None:
        self.memory.forget(f"batch_{kind}_refused_at")

    def _forget_batch_answers(self) -> None:
        for kind in ("read", "write"):
            self.memory.forget(f"batch_{kind}_refused_at")

    # -- small helpers -----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    def _cursor_ms(self, cursor: str | None) -> int | None:
        if cursor is None:
            return None
        try:
            return int(cursor)
        except ValueError:
            raise VendorPermanentError(self.name, "read cursor", f"the saved cursor {cursor!r} is not a "
                                       "millisecond timestamp") from None

    def _unit_params(self) -> dict[str, Any]:
        return {"channel": "EMAIL", "businessUnitId": self.settings.business_unit_id}

    def _parse(self, response: httpx.Response, model: type, endpoint: str):
        try:
            return self.http.parse(response, model, endpoint)
        except VendorPermanentError as exc:
            raise UnexpectedAnswer(self.name, endpoint, exc.vendor_message, status=exc.status) from None


def _is_status(optout: OptOut) -> bool:
    """True for an opt-out read from a status change (which v4 can confirm), not a bounce or spam report."""
    return (optout.details or {}).get("hubspot_change_type") in ("PORTAL_STATUS", "SUBSCRIPTION_STATUS")


# -- re-subscribes (issue 17): who made a change back to SUBSCRIBED -----------------------------
#
# Confirmed (developers.hubspot.com, "Get subscriptions timeline", v1 legacy reference, found with
# the search tool): every timeline change carries `source`, and the reference's own example shows
# a recipient opting back in as `change: SUBSCRIBED`, `source: SOURCE_RECIPIENT`, with
# `changeType` PORTAL_STATUS (all email) or SUBSCRIPTION_STATUS (one subscription), the item's
# millisecond `timestamp` and a `causedByEvent.id`. So HubSpot says who re-subscribed, and when.
# Inferred (the source names are not listed in the reference; they are the ones the timeline and
# the v4 status `source` show): SOURCE_HUBSPOT_CUSTOMER is a portal user by hand, SOURCE_IMPORT an
# import, SOURCE_API/SOURCE_INTEGRATION an API client. Any other or missing source is "unknown",
# which never releases an opt-out.
RESUBSCRIBED_BY = {
    "SOURCE_RECIPIENT": "recipient",
    "SOURCE_HUBSPOT_CUSTOMER": "admin",
    "SOURCE_IMPORT": "import",
    "SOURCE_API": "api",
    "SOURCE_INTEGRATION": "api",
}


def resubscribe_of(change: TimelineChange, address: str, scope: str | None, moment: int | None) -> Resubscribe | None:
    """A timeline change back to SUBSCRIBED as a Resubscribe with its evidence; None for anything else.

    `scope` is what the change covers here (None: nothing this adapter serves, such as another
    business unit or an unmapped subscription; such a change stays a history line or is ignored).
    """
    if change.change != "SUBSCRIBED" or scope is None:
        return None
    evidence = {"vendor": "hubspot", "hubspot_source": change.source, "hubspot_change_type": change.changeType}
    if change.subscriptionId is not None:
        evidence["hubspot_subscription_id"] = str(change.subscriptionId)
    if change.causedByEvent and change.causedByEvent.get("id"):
        evidence["hubspot_event_id"] = str(change.causedByEvent["id"])
    return Resubscribe(address, scope, RESUBSCRIBED_BY.get(change.source or "", "unknown"),
                       _ms_to_iso(moment) if moment else None, evidence)


def resubscribe_scope(change: TimelineChange, business_unit_id: int, topic_of: dict[str, str]) -> str | None:
    """The scope a status change covers at the adapter instance of `business_unit_id`, or None."""
    if change.changeType == "PORTAL_STATUS":
        unit = change.businessUnitId
        return GLOBAL_SCOPE if unit is None or unit == business_unit_id else None
    if change.changeType == "SUBSCRIPTION_STATUS":
        return topic_of.get(str(change.subscriptionId))
    return None
