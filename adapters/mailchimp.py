"""`mailchimp`: two-way opt-out sync with one Mailchimp audience (list) through the Marketing API 3.0.

One adapter instance per audience; `scope` says which of our scopes the audience
stands for (`*` by default). It never subscribes anyone and never creates a
member unless `create_members = true`.

What this relies on from Mailchimp's Marketing API ([LIB] = the official client
libraries or the OpenAPI spec they are generated from, [DOC] = Mailchimp's pages,
found with the search tool; [SETTING] = not confirmed, so a setting):
- Base URL https://<dc>.api.mailchimp.com/3.0 where <dc> ends the API key
  (`...-us21`); HTTP Basic auth with any user name and the key [LIB].
- GET /lists/{list_id}/members filters by `status` (one value), `since_last_changed`
  and `before_last_changed` (ISO 8601), sorts by `sort_field=last_changed` with
  `sort_dir`, and pages with `count` (at most 1000) and `offset`; the answer has
  `members` and `total_items` [LIB]. A member has `email_address`, `status`
  (subscribed, unsubscribed, cleaned, pending, transactional, archived),
  `last_changed`, `unsubscribe_reason` [LIB]. `unsubscribed` -> unsubscribed by the
  recipient (no origin field exists, so an admin's unsubscribe reads the same: the safe,
  unliftable reading; the webhook's `source` user/admin/api would tell; the reason is kept
  in details), `cleaned`
  (hard-bounced) -> hard_bounce by the system, for all email.
- GET /lists/{list_id}/abuse-reports pages with count/offset, items {id,
  campaign_id, email_address, date}, no time filter [LIB]: spam complaints, for
  all email (`read_abuse_reports`).
- GET /lists/{list_id}/members/{subscriber_hash}, the hash being the MD5 of the
  lower-cased address; 404 when the address is not a member [LIB].
- POST /lists/{list_id} with {"members": [{email_address, status}],
  "update_existing": true}: at most 500 members per call; 200 even when some
  fail, with new_members, updated_members and errors [{email_address, error,
  error_code}] [LIB]. It CREATES members it does not know: so only addresses
  found as members are sent, unless `create_members`. Between the look-up and
  the batch (seconds) a member deleted at Mailchimp would be re-created; that
  is reported. An `archived` member is not billed and not mailed; updating it
  would unarchive it (and bill it again), so an archived member is never written,
  with or without `create_members`: it holds the opt-out (ALREADY). The member
  look-up answers `status: "archived"` for one [LIB: the member status enum].
- Undoing an unsubscribe means re-subscribing, which needs the person's consent:
  `remove` refuses every item.
- Errors are application/problem+json {type, title, status, detail, instance}
  [LIB]; the limit is 10 simultaneous connections per key, 429 beyond it, and
  no rate-limit headers are sent (Mailchimp's fundamentals page as quoted by a
  third-party summary). This client makes one call at a time; a 429 is retried
  with back-off by the shared policy.
- Billing: Mailchimp counts unsubscribed (and non-subscribed) contacts in an
  audience toward the plan's contact limit; archived ones do not (a post by
  Mailchimp Support). `create_members` therefore adds one billed contact per
  created address.

Incremental read, for the window [cursor - overlap, now] (cursor = ISO time): abuse
reports filtered by `date`, then cleaned and unsubscribed members by `last_changed`,
oldest change first; the cursor moves to the window's end once all is read.
`last_changed` also moves on edits that are not opt-outs; such members are read
again, which the store makes harmless. Offset paging over a set that changes
meanwhile can skip a member; the periodic reconcile brings it back.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from state.addresses import InvalidAddress, normalise_address
from state.errors import ConfigError, TransientError
from state.models import (
    ALREADY,
    APPLIED,
    GLOBAL_SCOPE,
    PERMANENT,
    TRANSIENT,
    ApplyResult,
    OptOut,
    Page,
    Rejected,
    to_utc_iso,
)

from .base import Capabilities, Duration
from .http import (
    explain_refusal,
    VendorAnswer,
    Clock,
    HttpAdapterSettings,
    HttpClient,
    RetryBudgetSpent,
    VendorError,
    VendorPermanentError,
    check_base_url,
    parse_retry_after,
)

_DATA_CENTER = re.compile(r"-([a-z]{2,4}\d{1,3})$")
_LIMIT_WORDS = re.compile(r"\b(limit|maximum|max|too many|exceed\w*|at most)\b", re.IGNORECASE)
MEMBER_FIELDS = "members.email_address,members.status,members.last_changed,members.unsubscribe_reason,total_items"
# Statuses an opt-out is written over; `unsubscribed` and `cleaned` already keep mail away.
WRITABLE = frozenset({"subscribed", "pending", "transactional"})
DONE = frozenset({"unsubscribed", "cleaned"})


def subscriber_hash(address: str) -> str:
    """Mailchimp's member id: the MD5 of the lower-cased address."""
    return hashlib.md5(address.lower().encode("utf-8")).hexdigest()


class MailchimpSettings(HttpAdapterSettings):
    """Settings of a `mailchimp` adapter instance (one per audience)."""

    type: Literal["mailchimp"] = "mailchimp"
    api_key: SecretStr = Field(description="A Mailchimp API key; its -usNN suffix names the data center.")
    # None: derived from the key's data-center suffix (https://<dc>.api.mailchimp.com/3.0).
    base_url: str | None = None
    list_id: str = Field(pattern=r"^[A-Za-z0-9]{1,64}$", examples=["a1b2c3d4e5"],
                         description="The audience id (Audience > Settings > Unique id for audience).")
    scope: str = GLOBAL_SCOPE
    create_members: bool = False
    batch_size: int = Field(default=500, ge=1, le=500)
    page_size: int = Field(default=1000, ge=1, le=1000)
    overlap: Duration = 600.0
    # None: the first read takes the whole history (it goes through max_new_per_cycle like any read).
    initial_lookback: Duration | None = None
    read_abuse_reports: bool = True
    # The secret in the webhook URL (/hooks/<name>/<secret>): its webhooks are received when set.
    webhook_secret: SecretStr | None = Field(default=None, min_length=16)

    @field_validator("base_url")
    @classmethod
    def _secure_base_url(cls, value: str | None) -> str | None:
        return None if value is None else check_base_url(value)

    @field_validator("topics")
    @classmethod
    def _no_topics(cls, topics: dict[str, str]) -> dict[str, str]:
        if topics:
            raise ValueError("a Mailchimp adapter stands for one audience and one scope: set `scope` (a topic key, "
                             "or '*') and use one adapter per audience instead of `topics`")
        return topics

    @model_validator(mode="after")
    def _base_url_from_key(self) -> "MailchimpSettings":
        if self.base_url is None:
            match = _DATA_CENTER.search(self.api_key.get_secret_value().strip())
            if not match:
                raise ValueError("api_key has no data-center suffix (such as '-us21'); check the key or set base_url")
            self.base_url = f"https://{match.group(1)}.api.mailchimp.com/3.0"
        return self


# -- Mailchimp's answers, as far as this adapter relies on them ---------------------------------------


_Answer = VendorAnswer  # the shared base: unknown fields ignored, ids as text


class Member(_Answer):
    email_address: str
    status: str
    last_changed: str | None = None
    unsubscribe_reason: str | None = None


class MembersPage(_Answer):
    members: list[Member]
    total_items: int | None = None


class AbuseReport(_Answer):
    id: str | None = None
    campaign_id: str | None = None
    email_address: str
    date: str | None = None


class AbuseReportsPage(_Answer):
    abuse_reports: list[AbuseReport]
    total_items: int | None = None


class BatchError(_Answer):
    email_address: str = ""
    error: str = ""
    error_code: str | None = None


class BatchMember(_Answer):
    email_address: str


class BatchAnswer(_Answer):
    new_members: list[BatchMember] = Field(default_factory=list)
    updated_members: list[BatchMember] = Field(default_factory=list)
    errors: list[BatchError] = Field(default_factory=list)


class Audience(_Answer):
    id: str
    name: str = ""
    stats: dict[str, Any] = Field(default_factory=dict)


class AudiencesPage(_Answer):
    lists: list[Audience]
    total_items: int | None = None


class Ping(_Answer):
    health_status: str = ""


class UnexpectedAnswer(VendorPermanentError):
    """A 2xx answer this adapter cannot read: an adapter-level failure, never an item's."""


def mailchimp_error(response: httpx.Response, now: float) -> VendorError:
    """Mailchimp's problem detail {type, title, status, detail, instance, errors[]}."""
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    title, detail = body.get("title"), body.get("detail")
    message = ": ".join(str(p) for p in (title, detail) if p) or response.reason_phrase or "no message"
    fields = [f"{e.get('field')}: {e.get('message')}" for e in body.get("errors") or []
              if isinstance(e, dict) and e.get("message")]
    if fields:
        message += " (" + "; ".join(fields[:3]) + ")"
    instance = body.get("instance")
    return VendorError(message, str(title) if title else None, str(instance) if instance else None,
                       parse_retry_after(response.headers.get("retry-after"), now))


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _more(adapter: str, items: list, previous: list | None, offset: int, endpoint: str) -> bool:
    """False at the end of a list (an empty page); an error when a page repeats the previous one.

    A page with fewer items than asked for is not the end (only total_items or an empty
    page says so), and a repeated page means the offset was ignored: counting it again
    would skip a page, going on would loop.
    """
    if not items:
        return False
    if items == previous:
        raise UnexpectedAnswer(adapter, endpoint, f"the page at offset {offset} repeats the previous page", status=200)
    return True


def _api_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat()


class MailchimpAdapter:
    """Reads unsubscribed and cleaned members and abuse reports of one audience; unsubscribes existing members."""

    settings_model = MailchimpSettings

    def __init__(self, settings: MailchimpSettings, topics: dict[str, str],
                 transport: httpx.BaseTransport | None = None, clock: Clock | None = None):
        if settings.scope != GLOBAL_SCOPE and settings.scope not in topics:
            raise ValueError(f"scope {settings.scope!r} is not a topic defined under [topics]")
        self.settings = settings
        self.name = settings.name
        # remove=True so that a lift with --propagate asks, and records remove()'s reason for refusing.
        self.capabilities = Capabilities(
            read_changes=True, read_all=True, write=True, remove=True, batch_size=settings.batch_size,
            scopes=frozenset() if settings.scope == GLOBAL_SCOPE else frozenset({settings.scope}))
        key = settings.api_key.get_secret_value()
        basic = base64.b64encode(f"optout-sync:{key}".encode()).decode()
        self.http = HttpClient(settings.name, settings, headers={"Authorization": f"Basic {basic}"},
                               describe_error=mailchimp_error, transport=transport, clock=clock,
                               secrets=[key, basic])
        self.clock = self.http.clock
        self._list = f"/lists/{settings.list_id}"
        self._chunk_size = settings.batch_size

    def __repr__(self) -> str:
        return (f"MailchimpAdapter(name={self.name!r}, base_url={self.settings.base_url!r}, "
                f"list_id={self.settings.list_id!r}, scope={self.settings.scope!r})")

    # -- reading -------------------------------------------------------------------------------

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        """Members changed to unsubscribed/cleaned and abuse reports in [cursor - overlap, now]; cursor last."""
        self.http.new_cycle()
        now = datetime.fromtimestamp(self.clock.time(), timezone.utc).replace(microsecond=0)
        previous = self._cursor_time(cursor)
        if previous is not None:
            start: datetime | None = previous - timedelta(seconds=self.settings.overlap)
        elif self.settings.initial_lookback is not None:
            start = now - timedelta(seconds=self.settings.initial_lookback)
        else:
            start = None
        yield from self._pages(start, now, seen_up_to=previous)
        yield Page(cursor=_api_time(now))

    def read_all(self) -> Iterator[Page]:
        """Every unsubscribed and cleaned member and every abuse report, page by page (for reconcile)."""
        self.http.new_cycle()
        for page in self._pages(None, None, seen_up_to=None):
            if page.optouts:
                yield Page(page.optouts)

    def _pages(self, start: datetime | None, end: datetime | None, seen_up_to: datetime | None) -> Iterator[Page]:
        # Strongest first (spam complaints, bounces, unsubscribes): the store keeps the first staged
        # observation of an (address, scope) of a read, and an abuse report also unsubscribes the member.
        if self.settings.read_abuse_reports:
            for reports in self._abuse_reports():
                page = Page()
                for report in reports:
                    moment = _parse_time(report.date)
                    if start is not None and moment is not None and moment < start:
                        continue  # no time filter at Mailchimp for this list: keep the window's part
                    self._convert_report(report, moment, page, seen_up_to)
                if page.optouts or page.rejected:
                    yield page
        for status in ("cleaned", "unsubscribed"):
            for members in self._members(status, start, end):
                page = Page()
                for member in members:
                    self._convert_member(member, page, seen_up_to)
                if page.optouts or page.rejected:
                    yield page

    def _members(self, status: str, start: datetime | None, end: datetime | None) -> Iterator[list[Member]]:
        path = f"{self._list}/members"
        endpoint = "GET /lists/{list_id}/members"
        offset = 0
        previous: list[Member] | None = None
        while True:
            params: dict[str, Any] = {"status": status, "count": self.settings.page_size, "offset": offset,
                                      "sort_field": "last_changed", "sort_dir": "ASC", "fields": MEMBER_FIELDS}
            if start is not None:
                params["since_last_changed"] = _api_time(start)
            if end is not None:
                params["before_last_changed"] = _api_time(end)
            answer = self._parse(self.http.request("GET", path, endpoint=endpoint, params=params),
                                 MembersPage, endpoint)
            if not _more(self.name, answer.members, previous, offset, endpoint):
                return
            yield answer.members
            offset += len(answer.members)
            previous = answer.members
            if answer.total_items is not None and offset >= answer.total_items:
                return

    def _abuse_reports(self) -> Iterator[list[AbuseReport]]:
        path = f"{self._list}/abuse-reports"
        endpoint = "GET /lists/{list_id}/abuse-reports"
        offset = 0
        previous: list[AbuseReport] | None = None
        while True:
            answer = self._parse(self.http.request("GET", path, endpoint=endpoint, params={
                "count": self.settings.page_size, "offset": offset}), AbuseReportsPage, endpoint)
            if not _more(self.name, answer.abuse_reports, previous, offset, endpoint):
                return
            yield answer.abuse_reports
            offset += len(answer.abuse_reports)
            previous = answer.abuse_reports
            if answer.total_items is not None and offset >= answer.total_items:
                return

    def _convert_member(self, member: Member, page: Page, seen_up_to: datetime | None) -> None:
        moment = _parse_time(member.last_changed)
        fresh = seen_up_to is None or moment is None or moment > seen_up_to
        try:
            address = normalise_address(member.email_address)
        except InvalidAddress as exc:
            if fresh:
                page.rejected.append(Rejected(f"Mailchimp member changed at {member.last_changed}",
                                              member.email_address, f"invalid address {member.email_address!r}: "
                                              f"{exc}"))
            return
        occurred = to_utc_iso(moment) if moment else None
        details: dict[str, Any] = {"mailchimp_list": self.settings.list_id, "mailchimp_status": member.status}
        if member.status == "unsubscribed":
            if member.unsubscribe_reason:
                details["unsubscribe_reason"] = member.unsubscribe_reason
            page.optouts.append(OptOut(address, self.settings.scope, "unsubscribed", "recipient", occurred, details))
        elif member.status == "cleaned":
            # An address that hard-bounced is dead for every kind of mail, whatever the audience stands for.
            page.optouts.append(OptOut(address, GLOBAL_SCOPE, "hard_bounce", "system", occurred, details))

    def _convert_report(self, report: AbuseReport, moment: datetime | None, page: Page,
                        seen_up_to: datetime | None) -> None:
        fresh = seen_up_to is None or moment is None or moment > seen_up_to
        try:
            address = normalise_address(report.email_address)
        except InvalidAddress as exc:
            if fresh:
                page.rejected.append(Rejected(f"Mailchimp abuse report {report.id}", report.email_address,
                                              f"invalid address {report.email_address!r}: {exc}"))
            return
        details = {"mailchimp_list": self.settings.list_id, "mailchimp_abuse_report": report.id,
                   "campaign_id": report.campaign_id}
        # A spam complaint anywhere suppresses everywhere.
        page.optouts.append(OptOut(address, GLOBAL_SCOPE, "spam_complaint", "system",
                                   to_utc_iso(moment) if moment else None, details))

    # -- writing -------------------------------------------------------------------------------

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Unsubscribe each address that is a member (or create it unsubscribed with create_members); in order."""
        self.http.new_cycle()
        results: list[ApplyResult | None] = [None] * len(batch)
        wanted = []
        for index, optout in enumerate(batch):
            if optout.scope in (GLOBAL_SCOPE, self.settings.scope):
                wanted.append(index)
            else:
                results[index] = ApplyResult(optout, PERMANENT, (
                    f"audience {self.settings.list_id} stands for scope {self.settings.scope!r}, not "
                    f"{optout.scope!r}"))
        to_send = self._look_up(batch, wanted, results)
        if to_send:
            self._send(batch, to_send, results)
        done = [r for r in results if r is not None]
        if len(done) != len(batch):
            raise UnexpectedAnswer(self.name, "apply", "some items got no outcome", status=None)
        if done and all(r.outcome == TRANSIENT for r in done):
            # Nothing got through within this cycle's retry budget: the engine parks the whole batch.
            raise TransientError(f"{self.name}: no item of the batch could be sent: {done[0].message}")
        if self.settings.scope != GLOBAL_SCOPE:
            # An all-email opt-out written to a topic's audience reads back as that topic's: our echo.
            done = [ApplyResult(r.optout, r.outcome, r.message, fanned_out=(self.settings.scope,))
                    if r.outcome == APPLIED and r.optout.scope == GLOBAL_SCOPE else r for r in done]
        return done

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Refuse every item: undoing an unsubscribe at Mailchimp means re-subscribing, which needs consent."""
        return [ApplyResult(o, PERMANENT, (
            "Mailchimp can only undo an unsubscribe by re-subscribing the member, which needs the person's own "
            "consent (their sign-up form); this daemon never subscribes anyone")) for o in batch]

    def _look_up(self, batch: list[OptOut], indexes: list[int], results: list[ApplyResult | None]) -> list[int]:
        """Decide per address from its member record; the indexes to send in the batch write."""
        endpoint = "GET /lists/{list_id}/members/{subscriber_hash}"
        to_send = []
        seen: dict[str, str | None] = {}
        for position, index in enumerate(indexes):
            optout = batch[index]
            try:
                if optout.address not in seen:
                    seen[optout.address] = self._member_status(optout.address, endpoint)
            except VendorPermanentError as exc:
                if exc.status in (401, 403) or exc.status is None or isinstance(exc, UnexpectedAnswer):
                    raise
                results[index] = ApplyResult(optout, PERMANENT, str(exc))
                continue
            except RetryBudgetSpent as exc:
                for rest in indexes[position:]:
                    results[rest] = ApplyResult(batch[rest], TRANSIENT, str(exc))
                break
            except TransientError as exc:
                results[index] = ApplyResult(optout, TRANSIENT, str(exc))
                continue
            status = seen[optout.address]
            if status in DONE:
                results[index] = ApplyResult(optout, ALREADY, f"Mailchimp member is {status} already")
            elif status == "archived":
                # Checked before create_members: writing would unarchive the member and bill it again.
                results[index] = ApplyResult(optout, ALREADY, (
                    "archived at Mailchimp (not mailed, not billed): holds the opt-out; left archived"))
            elif status in WRITABLE or self.settings.create_members:
                to_send.append(index)
            elif status is None:
                results[index] = ApplyResult(optout, PERMANENT, (
                    f"not a member of audience {self.settings.list_id}; create_members is off, so no contact was "
                    "created (Mailchimp would bill it)"))
            else:
                results[index] = ApplyResult(optout, PERMANENT, f"Mailchimp member has status {status!r}; "
                                                                "not changed")
        return to_send

    def _member_status(self, address: str, endpoint: str) -> str | None:
        path = f"{self._list}/members/{subscriber_hash(address)}"
        try:
            response = self.http.request("GET", path, endpoint=endpoint, params={"fields": "email_address,status"})
        except VendorPermanentError as exc:
            if exc.status == 404:
                return None
            raise
        return self._parse(response, Member, endpoint).status

    def _send(self, batch: list[OptOut], indexes: list[int], results: list[ApplyResult | None]) -> None:
        """Batch writes of status `unsubscribed`; halve on a 400 naming a limit, one by one on another 400."""
        pending = list(indexes)
        while pending:
            chunk = pending[:self._chunk_size]
            try:
                outcomes = self._batch_unsubscribe([batch[i] for i in chunk])
            except UnexpectedAnswer:
                raise
            except VendorPermanentError as exc:
                if exc.status in (401, 403) or exc.status is None:
                    raise
                if exc.status == 400 and _LIMIT_WORDS.search(exc.vendor_message) and self._chunk_size > 1:
                    self._chunk_size = max(1, self._chunk_size // 2)
                    continue
                self._send_singly(batch, chunk, results)
                pending = pending[len(chunk):]
                continue
            except TransientError as exc:
                for index in pending:
                    results[index] = ApplyResult(batch[index], TRANSIENT, str(exc))
                return
            for index, outcome in zip(chunk, outcomes):
                results[index] = outcome
            pending = pending[len(chunk):]

    def _send_singly(self, batch: list[OptOut], indexes: list[int], results: list[ApplyResult | None]) -> None:
        for position, index in enumerate(indexes):
            optout = batch[index]
            try:
                results[index] = self._batch_unsubscribe([optout])[0]
            except UnexpectedAnswer:
                raise
            except VendorPermanentError as exc:
                if exc.status in (401, 403) or exc.status is None:
                    raise
                results[index] = ApplyResult(optout, PERMANENT, str(exc))
            except RetryBudgetSpent as exc:
                for rest in indexes[position:]:
                    results[rest] = ApplyResult(batch[rest], TRANSIENT, str(exc))
                return
            except TransientError as exc:
                results[index] = ApplyResult(optout, TRANSIENT, str(exc))

    def _batch_unsubscribe(self, items: list[OptOut]) -> list[ApplyResult]:
        endpoint = "POST /lists/{list_id}"
        # Only ever status `unsubscribed`: this adapter never subscribes anyone.
        addresses = list(dict.fromkeys(o.address for o in items))  # an address may come for `*` and the scope
        body = {"members": [{"email_address": a, "status": "unsubscribed"} for a in addresses],
                "update_existing": True}
        answer = self._parse(self.http.request("POST", self._list, endpoint=endpoint, json=body),
                             BatchAnswer, endpoint)
        updated = {m.email_address.strip().lower() for m in answer.updated_members}
        created = {m.email_address.strip().lower() for m in answer.new_members}
        refused = {e.email_address.strip().lower(): e for e in answer.errors}
        outcomes = []
        for optout in items:
            if optout.address in updated:
                outcomes.append(ApplyResult(optout, APPLIED))
            elif optout.address in created:
                note = "created as an unsubscribed member (create_members)" if self.settings.create_members else \
                    "created as an unsubscribed member: it left the audience between the look-up and the write"
                outcomes.append(ApplyResult(optout, APPLIED, note))
            elif optout.address in refused:
                error = refused[optout.address]
                outcomes.append(ApplyResult(optout, PERMANENT, f"{self.name}: Mailchimp refused it: "
                                                               f"{error.error_code or 'error'}: {error.error}"))
            else:
                # Not mentioned in the answer: the next cycle's look-up will tell.
                outcomes.append(ApplyResult(optout, TRANSIENT, f"{self.name}: Mailchimp's batch answer does not "
                                                               "mention it; checked again next cycle"))
        return outcomes

    # -- operator checks --------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Verify the key with read-only calls and list the account's audiences."""
        self.http.new_cycle()
        ping = self._parse(self.http.request("GET", "/ping", endpoint="GET /ping"), Ping, "GET /ping")
        lines = [f"API reachable: {ping.health_status or 'ok'}"]
        audiences: list[Audience] = []
        offset = 0
        while True:
            page = self._parse(self.http.request("GET", "/lists", endpoint="GET /lists", params={
                "count": 1000, "offset": offset, "fields": "lists.id,lists.name,lists.stats,total_items"}),
                AudiencesPage, "GET /lists")
            audiences += page.lists
            offset += len(page.lists)
            if not page.lists or page.total_items is None or offset >= page.total_items:
                break
        lines.append(f"{len(audiences)} audiences")
        found = False
        for audience in audiences:
            members = audience.stats.get("member_count")
            unsubscribed = audience.stats.get("unsubscribe_count")
            mark = ""
            if audience.id == self.settings.list_id:
                found = True
                mark = f" <- this adapter (scope {self.settings.scope})"
            lines.append(f"audience {audience.id} ({audience.name}): {members} subscribed, {unsubscribed} "
                         f"unsubscribed{mark}")
        if not found:
            raise ConfigError(f"{self.name}: audience {self.settings.list_id} is not in this Mailchimp account")
        lines.append("create_members: " + ("on (non-members are created as unsubscribed contacts, which "
                                           "Mailchimp bills)" if self.settings.create_members else
                                           "off (non-members are reported, never created)"))
        return lines

    def probe_refusal(self, exc: BaseException) -> str | None:
        """Why a check() probe was refused: the API key, or audience `list_id` (or its interest) not found."""
        if getattr(exc, "status", None) == 404 and "/lists/" in str(getattr(exc, "endpoint", "")):
            return f"audience {self.settings.list_id} (list_id) or its interest is not in this Mailchimp account"
        return explain_refusal(exc, "api_key", f"access to audience {self.settings.list_id}")

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    # -- small helpers -----------------------------------------------------------------------------

    def _cursor_time(self, cursor: str | None) -> datetime | None:
        if cursor is None:
            return None
        moment = _parse_time(cursor)
        if moment is None:
            raise VendorPermanentError(self.name, "read cursor", f"the saved cursor {cursor!r} is not an ISO time")
        return moment

    def _parse(self, response: httpx.Response, model: type, endpoint: str):
        try:
            return self.http.parse(response, model, endpoint)
        except VendorPermanentError as exc:
            raise UnexpectedAnswer(self.name, endpoint, exc.vendor_message, status=exc.status) from None
