"""`mailchimp`: two-way opt-out sync with one Mailchimp audience (list) through the Marketing API 3.0.

One adapter instance per audience; `scope` says which of our scopes the audience stands for (`*` by
default). It never subscribes anyone and never creates a member unless `create_members = true`.

What this relies on from Mailchimp's Marketing API ([LIB] = the official client libraries or the
OpenAPI spec they are generated from, [DOC] = Mailchimp's pages, found with the search tool;
[SETTING] = not confirmed, so a setting):
- Base URL https://<dc>.api.mailchimp.com/3.0 where <dc> ends the API key (`...-us21`); HTTP Basic
  auth with any user name and the key [LIB].
- GET /lists/{list_id}/members filters by `status` (one value), `since_last_changed` and
  `before_last_changed` (ISO 8601), sorts by `sort_field=last_changed` with `sort_dir`, and pages
  with `count` (at most 1000) and `offset`; the answer has `members` and `total_items` [LIB]. A
  member has `email_address`, `status` (subscribed, unsubscribed, cleaned, pending, transactional,
  archived), `last_changed`, `unsubscribe_reason` [LIB]. `unsubscribed` -> unsubscribed by the
  recipient (no origin field exists, so an admin's unsubscribe reads the same: the safe, unliftable
  reading; the webhook's `source` user/admin/api would tell; the reason is kept in details),
  `cleaned` (hard-bounced) -> hard_bounce by the system, for all email.
- GET /lists/{list_id}/abuse-reports pages with count/offset, items {id, campaign_id, email_address,
  date}, no time filter [LIB]: spam complaints, for all email (`read_abuse_reports`).
- GET /lists/{list_id}/members/{subscriber_hash}, the hash being the MD5 of the lower-cased address;
  404 when the address is not a member [LIB].
- POST /lists/{list_id} with {"members": [{email_address, status}], "update_existing": true}: at
  most 500 members per call; 200 even when some fail, with new_members, updated_members and errors
  [{email_address, error, error_code}] [LIB]. It CREATES members it does not know: so only addresses
  found as members are sent, unless `create_members`. Between the look-up and the batch (seconds) a
  member deleted at Mailchimp would be re-created; that is reported. An `archived` member is not
  billed and not mailed; updating it would unarchive it (and bill it again), so an archived member
  is never written, with or without `create_members`: it holds the opt-out (ALREADY). The member
  look-up answers `status: "archived"` for one [LIB: the member status enum].
- Undoing an unsubscribe means re-subscribing, which needs the person's consent: `remove` refuses
  every item.
- Errors are application/problem+json {type, title, status, detail, instance} [LIB]; the limit is 10
  simultaneous connections per key, 429 beyond it, no request rate, and no rate-limit headers are
  sent (Mailchimp's fundamentals page as quoted by a third-party summary; Mailchimp's own API notice
  "API calls are limited only by concurrency"). Member look-ups run on up to `concurrent_requests`
  (10) connections at once; other calls go one at a time; the rolling request window defaults to
  10,000 per 10 s, a safety net only; a 429 is retried with back-off by the shared policy.
- Billing: Mailchimp counts unsubscribed (and non-subscribed) contacts in an audience toward the
  plan's contact limit; archived ones do not (a post by Mailchimp Support). `create_members`
  therefore adds one billed contact per created address.

Incremental read, for the window [cursor - overlap, now] (cursor = ISO time): abuse reports filtered
by `date`, then cleaned and unsubscribed members by `last_changed`, oldest change first; the cursor
moves to the window's end once all is read. `last_changed` also moves on edits that are not
opt-outs; such members are read again, which the store makes harmless. Offset paging over a set that
changes meanwhile can skip a member; the periodic reconcile brings it back.

Re-subscribes (issue 17): members changed back to `subscribed` are read too (one more list call per
cycle). The member record does not say who changed it; a confirmed opt-in (`ip_opt` and
`timestamp_opt`) is read as the person's own (inferred; see
adapters/mailchimp_resubscribes.py), anything else as "unknown", which never releases an opt-out. The full read does not read
them: the daemon's cycle, which reads them, runs just before each of its reconciles.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from state.errors import ConfigError, TransientError
from state.models import ALREADY, APPLIED, GLOBAL_SCOPE, PERMANENT, TRANSIENT, ApplyResult, OptOut, Page, to_utc_iso

from .http import Clock, RetryBudgetSpent, VendorAnswer, VendorError, VendorPermanentError, check_base_url
from .kit import (HttpAdapter, WindowSettings, adapter_failure, address_or_reject, basic_auth, filled_pages, json_body,
                  parse_time, topic_capabilities, vendor_error)
from .mailchimp_resubscribes import resubscribe_pages
from .kit import UnexpectedAnswer  # noqa: F401  (re-exported: callers catch it from the vendor module)

_DATA_CENTER = re.compile(r"-([a-z]{2,4}\d{1,3})$")
_LIMIT_WORDS = re.compile(r"\b(limit|maximum|max|too many|exceed\w*|at most)\b", re.IGNORECASE)
MEMBER_FIELDS = "members.email_address,members.status,members.last_changed,members.unsubscribe_reason,total_items"
# Statuses an opt-out is written over; `unsubscribed` and `cleaned` already keep mail away.
WRITABLE = frozenset({"subscribed", "pending", "transactional"})
DONE = frozenset({"unsubscribed", "cleaned"})


def subscriber_hash(address: str) -> str:
    """Mailchimp's member id: the MD5 of the lower-cased address."""
    return hashlib.md5(address.lower().encode("utf-8")).hexdigest()


class MailchimpSettings(WindowSettings):
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
    # Mailchimp limits each key to 10 simultaneous connections and sets no request rate: member
    # look-ups run on up to this many connections, and the rolling window is only a safety net.
    concurrent_requests: int = Field(default=10, ge=1, le=10)
    rate_limit_requests: int = Field(default=10_000, ge=1)
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


class Member(VendorAnswer):
    email_address: str
    status: str
    last_changed: str | None = None
    unsubscribe_reason: str | None = None
    # Read for re-subscribes only (mailchimp_resubscribes.EXTRA_FIELDS): the person's own opt-in confirmation.
    unique_email_id: str | None = None
    timestamp_opt: str | None = None
    ip_opt: str | None = None


class Counted(VendorAnswer):
    """A page of a list that Mailchimp pages by offset: how many items the whole list holds."""

    total_items: int | None = None


class MembersPage(Counted):
    members: list[Member]


class AbuseReport(VendorAnswer):
    id: str | None = None
    campaign_id: str | None = None
    email_address: str
    date: str | None = None


class AbuseReportsPage(Counted):
    abuse_reports: list[AbuseReport]


class BatchError(VendorAnswer):
    email_address: str = ""
    error: str = ""
    error_code: str | None = None


class BatchMember(VendorAnswer):
    email_address: str


class BatchAnswer(VendorAnswer):
    new_members: list[BatchMember] = Field(default_factory=list)
    updated_members: list[BatchMember] = Field(default_factory=list)
    errors: list[BatchError] = Field(default_factory=list)


class Audience(VendorAnswer):
    id: str
    name: str = ""
    stats: dict[str, Any] = Field(default_factory=dict)


class AudiencesPage(Counted):
    lists: list[Audience]


class Ping(VendorAnswer):
    health_status: str = ""


def mailchimp_error(response: httpx.Response, now: float) -> VendorError:
    """Mailchimp's problem detail {type, title, status, detail, instance, errors[]}."""
    body = json_body(response)
    title, detail = body.get("title"), body.get("detail")
    message = ": ".join(str(p) for p in (title, detail) if p) or response.reason_phrase or "no message"
    fields = [f"{e.get('field')}: {e.get('message')}" for e in body.get("errors") or []
              if isinstance(e, dict) and e.get("message")]
    if fields:
        message += " (" + "; ".join(fields[:3]) + ")"
    instance = body.get("instance")
    return vendor_error(response, now, message, str(title) if title else None, str(instance) if instance else None)


def _api_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat()


class MailchimpAdapter(HttpAdapter):
    """Reads unsubscribed and cleaned members and abuse reports of one audience; unsubscribes existing members."""

    settings_model = MailchimpSettings
    shown = ("base_url", "list_id", "scope")
    limit_words = _LIMIT_WORDS

    def __init__(self, settings: MailchimpSettings, topics: dict[str, str],
                 transport: httpx.BaseTransport | None = None, clock: Clock | None = None):
        if settings.scope != GLOBAL_SCOPE and settings.scope not in topics:
            raise ValueError(f"scope {settings.scope!r} is not a topic defined under [topics]")
        # remove=True so that a lift with --propagate asks, and records remove()'s reason for refusing.
        self.capabilities = topic_capabilities(settings, [] if settings.scope == GLOBAL_SCOPE else [settings.scope])
        self.start(settings, **basic_auth("optout-sync", settings.api_key.get_secret_value()),
                   describe_error=mailchimp_error, transport=transport, clock=clock)
        self._list = f"/lists/{settings.list_id}"

    # -- reading -------------------------------------------------------------------------------

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        """Members changed to unsubscribed/cleaned and abuse reports in [cursor - overlap, now]; cursor last."""
        self.http.new_cycle()
        now = self.now().replace(microsecond=0)
        previous = self.saved_text(cursor, parse_time, "an ISO time")
        start = self.window_start(previous, now)
        yield from self._pages(start, now, seen_up_to=previous)
        yield from resubscribe_pages(self, start, now)
        yield Page(cursor=_api_time(now))

    def read_all(self) -> Iterator[Page]:
        """Every unsubscribed and cleaned member and every abuse report, page by page (for reconcile)."""
        return self.whole(self._pages(None, None, seen_up_to=None))

    def _pages(self, start: datetime | None, end: datetime | None, seen_up_to: datetime | None) -> Iterator[Page]:
        # Strongest first (spam complaints, bounces, unsubscribes): the store keeps the first staged
        # observation of an (address, scope) of a read, and an abuse report also unsubscribes the member.
        if self.settings.read_abuse_reports:
            yield from filled_pages(self._abuse_reports(),
                                    lambda report, page: self._convert_report(report, page, start, seen_up_to))
        for status in ("cleaned", "unsubscribed"):
            yield from filled_pages(self._members(status, start, end),
                                    lambda member, page: self._convert_member(member, page, seen_up_to))

    def _members(self, status: str, start: datetime | None, end: datetime | None,
                 fields: str = MEMBER_FIELDS) -> Iterator[list[Member]]:
        window = {k: _api_time(v) for k, v in (("since_last_changed", start), ("before_last_changed", end)) if v}
        return self._offset_pages(f"{self._list}/members", "GET /lists/{list_id}/members", MembersPage, "members", {
            "status": status, "count": self.settings.page_size, "sort_field": "last_changed", "sort_dir": "ASC",
            "fields": fields, **window})

    def _abuse_reports(self) -> Iterator[list[AbuseReport]]:
        return self._offset_pages(f"{self._list}/abuse-reports", "GET /lists/{list_id}/abuse-reports",
                                  AbuseReportsPage, "abuse_reports", {"count": self.settings.page_size})

    def _offset_pages(self, path: str, endpoint: str, model: type, field: str,
                      params: dict[str, Any]) -> Iterator[list]:
        """Pages by offset until an empty page or total_items (a short page is not the end at Mailchimp)."""
        def fetch(offset: int) -> tuple[list, bool]:
            answer = self.get(path, model, endpoint, params={**params, "offset": offset})
            items = getattr(answer, field)
            return items, answer.total_items is None or offset + len(items) < answer.total_items

        return self.offset_pages(fetch, endpoint)

    def _convert_member(self, member: Member, page: Page, seen_up_to: datetime | None) -> None:
        moment = parse_time(member.last_changed)
        fresh = seen_up_to is None or moment is None or moment > seen_up_to
        address = address_or_reject(member.email_address, page, f"Mailchimp member changed at {member.last_changed}",
                                    fresh)
        if address is None:
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

    def _convert_report(self, report: AbuseReport, page: Page, start: datetime | None,
                        seen_up_to: datetime | None) -> None:
        moment = parse_time(report.date)
        if start is not None and moment is not None and moment < start:
            return  # no time filter at Mailchimp for this list: keep the window's part
        fresh = seen_up_to is None or moment is None or moment > seen_up_to
        address = address_or_reject(report.email_address, page, f"Mailchimp abuse report {report.id}", fresh)
        if address is None:
            return
        details = {"mailchimp_list": self.settings.list_id, "mailchimp_abuse_report": report.id,
                   "campaign_id": report.campaign_id}
        # A spam complaint anywhere suppresses everywhere.
        page.optouts.append(OptOut(address, GLOBAL_SCOPE, "spam_complaint", "system",
                                   to_utc_iso(moment) if moment else None, details))

    # -- writing -------------------------------------------------------------------------------

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Unsubscribe each address that is a member (or create it unsubscribed with create_members); in order."""
        outcomes = self.batch_outcomes(batch)
        wanted = []
        for index, optout in enumerate(batch):
            if optout.scope in (GLOBAL_SCOPE, self.settings.scope):
                wanted.append(index)
            else:
                outcomes.refuse(index, f"audience {self.settings.list_id} stands for scope {self.settings.scope!r}, "
                                       f"not {optout.scope!r}")
        seen = self._member_statuses(list(dict.fromkeys(batch[i].address for i in wanted)))
        self.each(outcomes, wanted, lambda optout: self._decide(optout, seen))
        to_send = outcomes.pending(wanted)
        if to_send:
            self.send_batches(outcomes, to_send, self._batch_unsubscribe, lambda o: self._batch_unsubscribe([o])[0])
        done = outcomes.finished()
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

    def _decide(self, optout: OptOut, seen: dict[str, str | None | Exception]) -> ApplyResult | None:
        """An item's outcome from its member record; None when it goes into the batch write."""
        status = seen[optout.address]
        if isinstance(status, Exception):
            raise status  # its look-up's error, handled by `each` in the batch's order
        if status in DONE:
            return ApplyResult(optout, ALREADY, f"Mailchimp member is {status} already")
        if status == "archived":
            # Checked before create_members: writing would unarchive the member and bill it again.
            return ApplyResult(optout, ALREADY, "archived at Mailchimp (not mailed, not billed): holds the opt-out; "
                                                "left archived")
        if status in WRITABLE or self.settings.create_members:
            return None
        if status is None:
            return ApplyResult(optout, PERMANENT, (
                f"not a member of audience {self.settings.list_id}; create_members is off, so no contact was "
                "created (Mailchimp would bill it)"))
        return ApplyResult(optout, PERMANENT, f"Mailchimp member has status {status!r}; not changed")

    def _member_statuses(self, addresses: list[str]) -> dict[str, str | None | Exception]:
        """Each address's member status (None: not a member), or the error its look-up raised.

        The look-ups run on up to `concurrent_requests` connections at once, Mailchimp's limit being
        on simultaneous connections; `_decide` raises each error in the batch's order.
        """
        ended: list[Exception] = []  # an error that ends the batch: no look-up starts after it

        def one(address: str) -> tuple[str, str | None | Exception]:
            if ended:
                return address, ended[0]
            try:
                return address, self._member_status(address)
            except (VendorPermanentError, TransientError) as exc:
                if isinstance(exc, RetryBudgetSpent) or (isinstance(exc, VendorPermanentError)
                                                         and adapter_failure(exc)):
                    ended.append(exc)  # as one at a time would: nothing more is asked of Mailchimp
                return address, exc

        workers = min(self.settings.concurrent_requests, len(addresses))
        if workers <= 1:
            return dict(map(one, addresses))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.name}-lookup") as pool:
            return dict(pool.map(one, addresses))

    def _member_status(self, address: str) -> str | None:
        """The member's status; None when the address is not a member (404)."""
        try:
            return self.get(f"{self._list}/members/{subscriber_hash(address)}", Member,
                            "GET /lists/{list_id}/members/{subscriber_hash}",
                            params={"fields": "email_address,status"}).status
        except VendorPermanentError as exc:
            if exc.status == 404:
                return None
            raise

    def _batch_unsubscribe(self, items: list[OptOut]) -> list[ApplyResult]:
        addresses = list(dict.fromkeys(o.address for o in items))  # an address may come for `*` and the scope
        # Only ever status `unsubscribed`: this adapter never subscribes anyone.
        answer = self.post(self._list, BatchAnswer, "POST /lists/{list_id}", json={
            "members": [{"email_address": a, "status": "unsubscribed"} for a in addresses], "update_existing": True})
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

    def probe(self) -> list[str]:
        """Verify the key with read-only calls and list the account's audiences."""
        ping = self.get("/ping", Ping)
        lines = [f"API reachable: {ping.health_status or 'ok'}"]
        audiences = [audience for page in self._offset_pages("/lists", "GET /lists", AudiencesPage, "lists", {
            "count": 1000, "fields": "lists.id,lists.name,lists.stats,total_items"}) for audience in page]
        if not any(audience.id == self.settings.list_id for audience in audiences):
            raise ConfigError(f"{self.name}: audience {self.settings.list_id} is not in this Mailchimp account")
        lines.append(f"{len(audiences)} audiences")
        for audience in audiences:
            mark = f" <- this adapter (scope {self.settings.scope})" if audience.id == self.settings.list_id else ""
            lines.append(f"audience {audience.id} ({audience.name}): {audience.stats.get('member_count')} subscribed, "
                         f"{audience.stats.get('unsubscribe_count')} unsubscribed{mark}")
        lines.append("create_members: " + ("on (non-members are created as unsubscribed contacts, which "
                                           "Mailchimp bills)" if self.settings.create_members else
                                           "off (non-members are reported, never created)"))
        return lines

    def probe_missing(self, endpoint: str) -> str | None:
        """An audience `list_id` (or its interest) not found."""
        return (f"audience {self.settings.list_id} (list_id) or its interest is not in this Mailchimp account"
                if "/lists/" in endpoint else None)

    def probe_needs(self, exc: BaseException) -> str | None:
        return f"access to audience {self.settings.list_id}"
