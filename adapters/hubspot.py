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

Its v4 batch use (what the token may call, the full read's confirmation) is in
adapters/hubspot_batch.py, its answer models and error reading in adapters/hubspot_answers.py,
its contact clean-up in adapters/hubspot_contacts.py.

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

Re-subscribes (issue 17): a timeline change back to SUBSCRIBED carries its `source`, so it is read as
a Resubscribe with its evidence by both reads (a reconcile learns of it before it diffs); what is
confirmed and inferred: adapters/hubspot_resubscribes.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from state.addresses import InvalidAddress, normalise_address
from state.models import ALREADY, APPLIED, GLOBAL_SCOPE, ORIGINS, PERMANENT, REASONS, ApplyResult, OptOut, Page, \
    Rejected, to_utc_iso

from .base import AdapterMemory, Capabilities, Duration
from .http import Clock, HttpAdapterSettings
from .hubspot_answers import (BulkStatusesEnvelope, DefinitionsEnvelope, PublicStatus, StandardError, StatusEnvelope,
                              TimelineChange, TimelineItem, TimelinePage, hubspot_error, hubspot_pause_hint)
from .hubspot_batch import V4, HubSpotBatches
from .hubspot_resubscribes import resubscribe_of, resubscribe_scope
from .kit import Outcomes, UnexpectedAnswer, integer_topic_ids, require_topics

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

TIMELINE = "/email/public/v1/subscriptions/timeline"
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

    _subscription_ids = integer_topic_ids("HubSpot subscription ids")

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


def _ms_to_iso(ms: int) -> str:
    return to_utc_iso(datetime.fromtimestamp(ms / 1000, timezone.utc))


# -- the adapter ---------------------------------------------------------------------------------


class HubSpotAdapter(HubSpotBatches):
    """Reads opt-outs from HubSpot's subscription timeline and writes them as v4 preferences."""

    settings_model = HubSpotSettings
    shown = ("base_url", "business_unit_id")
    credential = "token"

    def __init__(self, settings: HubSpotSettings, topics: dict[str, str],
                 transport: httpx.BaseTransport | None = None, clock: Clock | None = None):
        require_topics(settings, topics)
        self._subscription_of = {topic: int(sid) for topic, sid in settings.topics.items()}
        self._topic_of = {str(sid): topic for topic, sid in self._subscription_of.items()}
        self.capabilities = Capabilities(read_changes=True, read_all=True, write=True, remove=True,
                                         batch_size=settings.batch_size, scopes=frozenset(settings.topics))
        token = settings.token.get_secret_value()
        self.start(settings, headers={"Authorization": f"Bearer {token}"},
                   buckets={"search": (settings.search_rate_limit_requests, settings.search_rate_limit_period)},
                   describe_error=hubspot_error, pause_hint=hubspot_pause_hint, transport=transport, clock=clock,
                   secrets=[token])
        # Remembered across processes (the engine loads and saves it): a 403 on a batch call,
        # so that a new process does not spend another 403 finding out again.
        self.memory = AdapterMemory()
        self._legal = {key: value for key, value in (("legalBasis", settings.legal_basis),
                                                     ("legalBasisExplanation", settings.legal_basis_explanation))
                       if value}

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

        def fetch(offset: str | None) -> tuple[list[TimelinePage], str | None]:
            params: dict[str, Any] = {"startTimestamp": start, "endTimestamp": end,
                                      "limit": self.settings.timeline_page_size, **({"offset": offset} if offset else {})}
            answer = self.get(TIMELINE, TimelinePage, endpoint, params=params)
            if answer.hasMore and not answer.offset:
                raise UnexpectedAnswer(self.name, endpoint, "the answer says hasMore but gives no offset", status=200)
            return [answer], answer.offset if answer.hasMore else None

        for (answer,) in self.follow(fetch, endpoint):
            yield answer, not answer.hasMore

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

    # -- writing -------------------------------------------------------------------------------

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Opt each address out at HubSpot (all email or one subscription); one result per item, in order."""
        return self._write(batch, "UNSUBSCRIBED")

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        """For an audited lift: topic opt-outs go back to NOT_SPECIFIED; all-email ones cannot be undone here."""
        return self._write(batch, "NOT_SPECIFIED")

    def _write(self, batch: list[OptOut], state: str) -> list[ApplyResult]:
        self.http.new_cycle()
        outcomes = Outcomes(self.name, batch)
        wide, topics = [], []
        for index, optout in enumerate(batch):
            if optout.scope == GLOBAL_SCOPE:
                if state == "UNSUBSCRIBED":
                    wide.append(index)
                else:
                    outcomes.refuse(index, (
                        "HubSpot has no way to undo an unsubscribe from all email short of re-subscribing, which "
                        "this daemon never does; the recipient or a HubSpot user must change it in HubSpot"))
            elif optout.scope in self._subscription_of:
                topics.append(index)
            else:
                outcomes.refuse(index, f"topic {optout.scope!r} has no HubSpot subscription id at {self.name}")
        if wide:
            self.send_batches(outcomes, wide, self._unsubscribe_all_batch, self._unsubscribe_all_one)
        if topics:
            self.send_batches(outcomes, topics, lambda items: self._status_batch(items, state),
                              lambda optout: self._status_one(optout, state))
        return outcomes.finished()

    def _unsubscribe_all_batch(self, items: list[OptOut]) -> list[ApplyResult | None]:
        path = f"{V4}/statuses/batch/unsubscribe-all"
        endpoint = f"POST {path}"
        answer = self.parse(self.http.request("POST", path, endpoint=endpoint,
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
        answer = self.parse(self.http.request("POST", path, endpoint=endpoint,
                                               params={**self._unit_params(), "verbose": "true"}),
                             StatusEnvelope, endpoint)
        return self._wide_outcome(optout, answer.results)

    def _status_batch(self, items: list[OptOut], state: str) -> list[ApplyResult | None]:
        path = f"{V4}/statuses/batch/write"
        endpoint = f"POST {path}"
        inputs = [{"subscriberIdString": o.address, "channel": "EMAIL", "statusState": state,
                   "subscriptionId": self._subscription_of[o.scope], **self._legal} for o in items]
        answer = self.parse(self.http.request("POST", path, endpoint=endpoint, json={"inputs": inputs}),
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
        answer = self.parse(self.http.request("POST", path, endpoint=endpoint, json={
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

    # -- operator checks --------------------------------------------------------------------------

    def probe(self) -> list[str]:
        """List the business unit's subscription types, flag unmapped ones, and probe scopes; changes nothing."""
        unit = self.settings.business_unit_id
        definitions = self.get(f"{V4}/definitions", DefinitionsEnvelope, params={"businessUnitId": unit}).results
        problems: list[str] = []
        lines = [f"business unit {unit}: {len(definitions)} subscription types"] + self.topic_lines(
            {d.id: d.name for d in definitions}, "subscription", problems,
            missing=f"which business unit {unit} does not have",
            unmapped="its unsubscribes are listed as rejected until a topic maps to it")
        self.refuse_if(problems)
        self.http.request("GET", TIMELINE, endpoint=f"GET {TIMELINE}", params={"limit": 1})
        lines.append("subscription timeline: readable")
        lines.append(self._probe_batch())
        return lines

    def probe_needs(self, exc: BaseException) -> str | None:
        """The OAuth scope a refused probe lacked (named by HubSpot if it says)."""
        named = re.search(r"scopes are required: \[([^\]]*)\]", str(getattr(exc, "vendor_message", "")))
        endpoint = str(getattr(exc, "endpoint", ""))
        scope = (named.group(1).replace("'", "") if named else "content" if TIMELINE in endpoint
                 else "communication_preferences.read_write" if "/communication-preferences/" in endpoint
                 else "crm.objects.contacts.read" if "/crm/" in endpoint else None)
        return scope and f"OAuth scope {scope} (add it to the private app)"

    # -- small helpers -----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    def _cursor_ms(self, cursor: str | None) -> int | None:
        if cursor is None:
            return None
        try:
            return int(cursor)
        except ValueError:
            raise self.bad_cursor(f"the saved cursor {cursor!r} is not a millisecond timestamp") from None
