"""`klaviyo`: two-way opt-out sync with one Klaviyo account's email suppressions and list consent.

Reads suppressed profiles (all email) and list suppressions (topics) since a time;
writes suppressions with bulk suppression jobs and list unsubscribes with bulk
unsubscribe jobs; lifts only the suppressions a user made. Written through the
"Writing an adapter" section of docs/adapters.md.

What this relies on, checked with the search tool against developers.klaviyo.com
(C = confirmed, with where; I = inferred, hence a setting or the safe reading):
- C (docs "Authenticate"): `Authorization: Klaviyo-API-Key <private key>`; private keys
  start `pk_`; every /api call carries the `revision` header (required, YYYY-MM-DD),
  here `revision`, default 2026-10-15, the latest revision of the reference.
- C (reference "Bulk Suppress Profiles", "Bulk Unsuppress Profiles", "Bulk Unsubscribe
  Profiles", revision 2026-10-15): `POST /api/profile-suppression-bulk-create-jobs` and
  `/api/profile-suppression-bulk-delete-jobs` take up to 100 email addresses a request
  (`data.attributes.profiles.data[].attributes.email`), as JSON:API
  (`application/vnd.api+json`), and run as asynchronous jobs; a suppression made so has
  reason USER_SUPPRESSED; unsuppressing removes only USER_SUPPRESSED suppressions
  (unsubscribes, INVALID_EMAIL and HARD_BOUNCE stay). `POST
  /api/profile-subscription-bulk-delete-jobs` unsubscribes profiles, with a `list`
  relationship naming the list. Rate limits of these: burst 75/s, steady 750/m.
- C (reference "Get Profiles"): `GET /api/profiles`, `additional-fields[profile]=subscriptions`
  adds `subscriptions.email.marketing` with `suppression` ([{reason, timestamp}]) and
  `list_suppressions` ([{list_id, reason, timestamp}], schema EmailMarketingListSuppression);
  profiles sort by `subscriptions.email.marketing.suppression.timestamp` and
  `...list_suppressions.timestamp`; cursor paging through `links.next`
  (`page[cursor]`). I: that `filter=greater-than(<that field>,<time>)` selects profiles
  suppressed after a time (`greater-than` on datetimes is confirmed for `updated`,
  changelog 2023-05-30), `equals(email,"...")` for one address (the look-up before a
  lift), and the page maximum (`page_size` 100).
- C (docs "Rate limits, status codes, and errors"): per-account fixed windows, burst
  (1 s) and steady (1 min), 429 when either is spent; every non-429 answer carries
  `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the steady
  window resets), read by the shared policy. Private keys share the account's quota
  with its other integrations, so the default pacing (5 per second, 300 a minute) stays
  at 40 % of the steady limit. I: `Retry-After` on a 429 (Klaviyo's own Node client reads
  one; honoured when present).
- I: errors as JSON:API `{"errors": [{id, status, code, title, detail, source}]}` (the
  format of Klaviyo's API; read defensively); suppression reasons UNSUBSCRIBE,
  SPAM_COMPLAINT, HARD_BOUNCE, INVALID_EMAIL, USER_SUPPRESSED; that a list unsubscribe
  made through the API reads back as a list suppression with reason USER_SUPPRESSED;
  that suppressing an address held already, or one without a profile, succeeds
  (the job skips or creates it: Klaviyo counts profiles, so a suppressed new profile
  may count toward the plan as Mailchimp's unsubscribed members do).

Mapping: UNSUBSCRIBE -> unsubscribed (recipient), SPAM_COMPLAINT -> spam_complaint and
HARD_BOUNCE -> hard_bounce (system), USER_SUPPRESSED -> manual (user); INVALID_EMAIL is
not an opt-out (a malformed address) and is not read; an unknown reason is listed. A
list suppression of a mapped list is that topic's opt-out, by its reason.

Re-subscribes (issue 17): none is read. A suppression Klaviyo removes (a re-subscribe) leaves the
suppressed-profile reads, which keep no record of the removal, so it is drift: a reconcile re-applies
the opt-out. I (Klaviyo's OpenAPI schema as copied by a third party, found with the search tool, not
checked against the reference): a profile's `subscriptions.email.marketing` has `method` ("the method by
which the profile was subscribed", e.g. PREFERENCE_PAGE) and `consent_timestamp`, which might tell a
recipient's own re-subscribe; this adapter (written after issue 17's vendor review) does not read them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import httpx
from pydantic import Field, SecretStr, field_validator

from state.addresses import InvalidAddress, normalise_address
from state.models import ALREADY, APPLIED, GLOBAL_SCOPE, PERMANENT, ApplyResult, OptOut, Page, Rejected, to_utc_iso

from .base import Capabilities, Duration
from .http import Clock, HttpAdapterSettings, VendorAnswer, VendorError, generic_pause_hint
from .kit import (HttpAdapter, Outcomes, UnexpectedAnswer, cursor_text, json_body, newest_on_last_page, parse_time,
                  require_topics, vendor_error)

REVISION = "2026-10-15"
MAX_EMAILS = 100  # C: email addresses per bulk job request
PROFILES = "/api/profiles"
LISTS = "/api/lists"
SUPPRESS = "/api/profile-suppression-bulk-create-jobs"
UNSUPPRESS = "/api/profile-suppression-bulk-delete-jobs"
UNSUBSCRIBE = "/api/profile-subscription-bulk-delete-jobs"
SUPPRESSION = "subscriptions.email.marketing.suppression.timestamp"
LIST_SUPPRESSION = "subscriptions.email.marketing.list_suppressions.timestamp"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Klaviyo reason -> (reason, origin); INVALID_EMAIL is deliberately absent (not an opt-out).
REASONS = {"UNSUBSCRIBE": ("unsubscribed", "recipient"), "SPAM_COMPLAINT": ("spam_complaint", "system"),
           "HARD_BOUNCE": ("hard_bounce", "system"), "USER_SUPPRESSED": ("manual", "user")}
_LIST_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")


class KlaviyoSettings(HttpAdapterSettings):
    """Settings of a `klaviyo` adapter instance (one per Klaviyo account).

    `topics` maps a topic key to the id of the Klaviyo list whose unsubscribes stand for it.
    """

    type: Literal["klaviyo"] = "klaviyo"
    base_url: str = "https://a.klaviyo.com"
    api_key: SecretStr = Field(description="A Klaviyo private API key (pk_...) with the scopes profiles:read, "
                                           "lists:read, subscriptions:write and profiles:write.")
    revision: str = Field(default=REVISION, pattern=r"^\d{4}-\d{2}-\d{2}(\.[a-z0-9]+)?$")
    batch_size: int = Field(default=MAX_EMAILS, ge=1, le=MAX_EMAILS)
    page_size: int = Field(default=100, ge=1, le=100)
    # Suppressions this much older than the newest one seen are read again (late arrivals).
    overlap: Duration = 600.0
    # None: the first read takes the whole history (it goes through max_new_per_cycle like any read).
    initial_lookback: Duration | None = None
    # 40 % of the steady limit (750/m), which the account's other private-key integrations share.
    rate_limit_requests: int = Field(default=5, ge=1)
    rate_limit_period: Duration = 1.0

    @field_validator("topics")
    @classmethod
    def _list_ids(cls, topics: dict[str, str]) -> dict[str, str]:
        for topic, list_id in topics.items():
            if not _LIST_ID.match(str(list_id).strip()):
                raise ValueError(f"topic {topic!r}: expected a Klaviyo list id such as 'Y6nRLr', got {list_id!r}")
        return {topic: str(list_id).strip() for topic, list_id in topics.items()}


# -- Klaviyo's answers, as far as this adapter relies on them -------------------------------------------


class Suppression(VendorAnswer):
    reason: str
    timestamp: str | None = None
    list_id: str | None = None


class Marketing(VendorAnswer):
    suppression: list[Suppression] | None = None
    list_suppressions: list[Suppression] | None = None


class Channel(VendorAnswer):
    marketing: Marketing | None = None


class Subscriptions(VendorAnswer):
    email: Channel | None = None


class ProfileAttributes(VendorAnswer):
    email: str | None = None
    subscriptions: Subscriptions | None = None


class Profile(VendorAnswer):
    id: str
    attributes: ProfileAttributes = Field(default_factory=ProfileAttributes)

    def marketing(self) -> Marketing:
        channel = self.attributes.subscriptions.email if self.attributes.subscriptions else None
        return (channel.marketing if channel else None) or Marketing()


class Links(VendorAnswer):
    next: str | None = None


class ProfilesPage(VendorAnswer):
    data: list[Profile]
    links: Links | None = None


class ListItem(VendorAnswer):
    id: str
    attributes: dict[str, Any] = Field(default_factory=dict)


class ListsPage(VendorAnswer):
    data: list[ListItem]
    links: Links | None = None


class Job(VendorAnswer):
    id: str
    type: str


class JobAnswer(VendorAnswer):
    data: Job


def klaviyo_error(response: httpx.Response, now: float) -> VendorError:
    """Klaviyo's JSON:API `{"errors": [{id, code, title, detail}]}` body, and any Retry-After."""
    errors = [e for e in json_body(response).get("errors") or [] if isinstance(e, dict)]
    message = "; ".join(str(e.get("detail") or e.get("title")) for e in errors[:3] if e.get("detail") or e.get("title"))
    first = errors[0] if errors else {}
    return vendor_error(response, now, message or None, str(first["code"]) if first.get("code") else None,
                        str(first["id"]) if first.get("id") else None)


def _api_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _emails(items: list[OptOut]) -> dict[str, Any]:
    return {"data": [{"type": "profile", "attributes": {"email": o.address}}
                     for o in {o.address: o for o in items}.values()]}


class KlaviyoAdapter(HttpAdapter):
    """Reads suppressed profiles and list suppressions; writes suppressions and list unsubscribes."""

    settings_model = KlaviyoSettings

    def __init__(self, settings: KlaviyoSettings, topics: dict[str, str],
                 transport: httpx.BaseTransport | None = None, clock: Clock | None = None):
        require_topics(settings, topics)
        self._list_of = dict(settings.topics)
        self._topic_of = {list_id: topic for topic, list_id in settings.topics.items()}
        self.capabilities = Capabilities(read_changes=True, read_all=True, write=True, remove=True,
                                         batch_size=settings.batch_size, scopes=frozenset(settings.topics))
        key = settings.api_key.get_secret_value()
        self.start(settings, headers={"Authorization": f"Klaviyo-API-Key {key}", "revision": settings.revision,
                                      "Accept": "application/vnd.api+json"},
                   describe_error=klaviyo_error, pause_hint=generic_pause_hint, transport=transport, clock=clock,
                   secrets=[key])

    # -- reading ------------------------------------------------------------------------------------------

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        """Profiles suppressed (or list-suppressed) after the newest time seen minus `overlap`; cursor last."""
        self.http.new_cycle()
        newest = self.load_cursor(cursor, lambda saved: parse_time(saved["newest"]) if saved.get("newest") else None)
        if newest is not None:
            since = newest - timedelta(seconds=self.settings.overlap)
        elif self.settings.initial_lookback is not None:
            since = datetime.fromtimestamp(self.clock.time(), timezone.utc) - timedelta(
                seconds=self.settings.initial_lookback)
        else:
            since = EPOCH
        yield from newest_on_last_page(self._pages(since, listed_after=newest), newest,
                                       lambda seen: cursor_text(newest=seen.isoformat() if seen else None))

    def read_all(self) -> Iterator[Page]:
        """Every suppressed or list-suppressed profile, page by page (for reconcile)."""
        self.http.new_cycle()
        for page, _ in self._pages(EPOCH, listed_after=None, list_problems=False):
            if page.optouts:
                yield Page(page.optouts)

    def _pages(self, since: datetime, listed_after: datetime | None,
               list_problems: bool = True) -> Iterator[tuple[Page, datetime | None]]:
        """Pages of the profiles suppressed after `since`, then (with topics) of the list-suppressed ones."""
        fields = [SUPPRESSION] + ([LIST_SUPPRESSION] if self._topic_of else [])
        for field in fields:
            for profiles in self._profiles(field, since):
                page, newest = Page(), None
                for profile in profiles:
                    moment = self._convert(profile, page, since, listed_after, list_problems, lists=field != SUPPRESSION)
                    if moment is not None and (newest is None or moment > newest):
                        newest = moment
                yield page, newest

    def _profiles(self, field: str, since: datetime) -> Iterator[list[Profile]]:
        endpoint = f"GET {PROFILES}"
        query = {"additional-fields[profile]": "subscriptions", "page[size]": str(self.settings.page_size),
                 "filter": f"greater-than({field},{_api_time(since)})", "sort": field}

        def fetch(page_cursor: str | None) -> tuple[list[Profile], str | None]:
            answer = self.get(PROFILES, ProfilesPage, endpoint, params={
                **query, **({"page[cursor]": page_cursor} if page_cursor else {})})
            return answer.data, self._next_cursor(answer.links, endpoint)

        return self.follow(fetch, endpoint)

    def _next_cursor(self, links: Links | None, endpoint: str) -> str | None:
        # Only the cursor of links.next is used, against the configured host: the key never goes
        # wherever an answer points.
        if links is None or not links.next:
            return None
        cursor = dict(parse_qsl(urlsplit(links.next).query)).get("page[cursor]")
        if not cursor:
            raise UnexpectedAnswer(self.name, endpoint, "links.next has no page[cursor]", status=200)
        return cursor

    def _convert(self, profile: Profile, page: Page, since: datetime, listed_after: datetime | None,
                 list_problems: bool, lists: bool) -> datetime | None:
        """The opt-outs of one profile's suppressions after `since` (its list suppressions when `lists`)."""
        raw = profile.attributes.email or ""
        marketing = profile.marketing()
        entries = (marketing.list_suppressions if lists else marketing.suppression) or []
        newest = None
        for entry in entries:
            moment = parse_time(entry.timestamp)
            if moment is not None and (newest is None or moment > newest):
                newest = moment
            new = list_problems and (listed_after is None or moment is None or moment > listed_after)
            if moment is not None and moment < since:
                continue
            where = f"Klaviyo profile {profile.id}"
            try:
                address = normalise_address(raw)
            except InvalidAddress as exc:
                if new:
                    page.rejected.append(Rejected(where, raw, f"invalid address {raw!r}: {exc}"))
                return newest
            scope = self._topic_of.get(entry.list_id or "") if lists else GLOBAL_SCOPE
            if scope is None:
                continue  # a list no topic maps to (check lists them)
            if entry.reason == "INVALID_EMAIL":
                continue  # a malformed address, not an opt-out
            if entry.reason not in REASONS and lists:
                reason, origin = "unsubscribed", "recipient"  # the most binding reading: nobody lifts it
            elif entry.reason not in REASONS:
                if new:
                    page.rejected.append(Rejected(where, address, f"{address}: unknown Klaviyo suppression reason "
                                                                  f"{entry.reason!r}; not applied"))
                continue
            else:
                reason, origin = REASONS[entry.reason]
            details = {"klaviyo_reason": entry.reason, **({"klaviyo_list": entry.list_id} if lists else {})}
            page.optouts.append(OptOut(address, scope, reason, origin, to_utc_iso(moment) if moment else None,
                                       details))
        return newest

    # -- writing --------------------------------------------------------------------------------------------

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Suppress all-email opt-outs (bulk suppression jobs) and unsubscribe topic ones from their list."""
        self.http.new_cycle()
        outcomes = Outcomes(self.name, batch)
        wide, by_list = [], {}
        for index, optout in enumerate(batch):
            if optout.scope == GLOBAL_SCOPE:
                wide.append(index)
            elif optout.scope in self._list_of:
                by_list.setdefault(self._list_of[optout.scope], []).append(index)
            else:
                outcomes.refuse(index, f"topic {optout.scope!r} has no Klaviyo list at {self.name}")
        if wide:
            self.send_batches(outcomes, wide, self._suppress, lambda o: self._suppress([o])[0])
        for list_id, indexes in by_list.items():
            self.send_batches(outcomes, indexes, lambda items, i=list_id: self._unsubscribe(i, items),
                              lambda o, i=list_id: self._unsubscribe(i, [o])[0])
        return outcomes.finished()

    def _suppress(self, items: list[OptOut]) -> list[ApplyResult]:
        body = {"data": {"type": "profile-suppression-bulk-create-job", "attributes": {"profiles": _emails(items)}}}
        self.parse(self.http.request("POST", SUPPRESS, endpoint=f"POST {SUPPRESS}", json=body), JobAnswer,
                   f"POST {SUPPRESS}")
        # Read back, a suppression we made is USER_SUPPRESSED: `manual`, our echo (held_as).
        return [ApplyResult(o, APPLIED, "Klaviyo suppression job accepted", held_as="manual") for o in items]

    def _unsubscribe(self, list_id: str, items: list[OptOut]) -> list[ApplyResult]:
        body = {"data": {"type": "profile-subscription-bulk-delete-job",
                         "attributes": {"profiles": _emails(items)},
                         "relationships": {"list": {"data": {"type": "list", "id": list_id}}}}}
        response = self.http.request("POST", UNSUBSCRIBE, endpoint=f"POST {UNSUBSCRIBE}", json=body)
        if response.content:
            self.parse(response, JobAnswer, f"POST {UNSUBSCRIBE}")
        return [ApplyResult(o, APPLIED, f"Klaviyo list {list_id}: unsubscribe job accepted", held_as="manual")
                for o in items]

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        """For an audited lift: remove a suppression a user made (USER_SUPPRESSED); nothing else is removable."""
        self.http.new_cycle()
        outcomes = Outcomes(self.name, batch)
        self.each(outcomes, range(len(batch)), self._unsuppress)
        return outcomes.finished()

    def _unsuppress(self, optout: OptOut) -> ApplyResult:
        if optout.scope != GLOBAL_SCOPE:
            return ApplyResult(optout, PERMANENT, (
                "Klaviyo can only undo a list unsubscribe by subscribing the profile again, which needs the "
                "person's own consent; this daemon never subscribes anyone"))
        held = self._suppression_of(optout.address)
        if not held:
            return ApplyResult(optout, ALREADY, "Klaviyo holds no suppression")
        other = sorted({s.reason for s in held} - {"USER_SUPPRESSED"})
        if other:
            return ApplyResult(optout, PERMANENT, (
                f"Klaviyo holds it as {', '.join(other)}, which only the recipient or Klaviyo can undo; only "
                "suppressions a user made (USER_SUPPRESSED) are removed"))
        body = {"data": {"type": "profile-suppression-bulk-delete-job", "attributes": {"profiles": _emails([optout])}}}
        self.parse(self.http.request("POST", UNSUPPRESS, endpoint=f"POST {UNSUPPRESS}", json=body), JobAnswer,
                   f"POST {UNSUPPRESS}")
        return ApplyResult(optout, APPLIED, "Klaviyo unsuppression job accepted")

    def _suppression_of(self, address: str) -> list[Suppression]:
        escaped = address.replace("\\", "\\\\").replace('"', '\\"')
        answer = self.get(PROFILES, ProfilesPage, params={"additional-fields[profile]": "subscriptions",
                                                           "filter": f'equals(email,"{escaped}")'})
        return [s for profile in answer.data for s in profile.marketing().suppression or []]

    # -- the operator check ----------------------------------------------------------------------------------

    def probe(self) -> list[str]:
        """Verify the key and revision by listing the lists; flag unmapped ones; probe the profiles read."""
        endpoint = f"GET {LISTS}"
        known: dict[str, str] = {}

        def fetch(page_cursor: str | None) -> tuple[list[ListItem], str | None]:
            answer = self.get(LISTS, ListsPage, endpoint, params={
                "fields[list]": "name", **({"page[cursor]": page_cursor} if page_cursor else {})})
            return answer.data, self._next_cursor(answer.links, endpoint)

        for items in self.follow(fetch, endpoint):
            known.update({item.id: str(item.attributes.get("name") or "no name") for item in items})
        problems: list[str] = []
        lines = [f"API key valid (revision {self.settings.revision}); {len(known)} lists"] + self.topic_lines(
            known, "list", problems, missing="which this Klaviyo account does not have",
            unmapped="its unsubscribes are not read until a topic maps to it")
        self.refuse_if(problems)
        self.http.request("GET", PROFILES, endpoint=f"GET {PROFILES}", params={
            "page[size]": "1", "additional-fields[profile]": "subscriptions",
            "filter": f"greater-than({SUPPRESSION},{_api_time(EPOCH)})"})
        lines.append("suppressed profiles: readable")
        return lines

    def probe_needs(self, exc: BaseException) -> str | None:
        """The API key scope a refused probe lacked."""
        endpoint = str(getattr(exc, "endpoint", ""))
        scope = "lists:read" if LISTS in endpoint else "profiles:read" if PROFILES in endpoint else None
        return scope and f"API key scope {scope}"
