"""`sendgrid`: two-way opt-out sync with Twilio SendGrid's v3 suppression lists.

Reads global unsubscribes, unsubscribe-group (ASM) suppressions, hard bounces and
spam reports; writes global and group suppressions; lifts by deleting them.

What this relies on from SendGrid's v3 reference (twilio.com/docs/sendgrid/api-reference,
checked with the search tool; [DOC] = SendGrid's own page, [LIB] = an official or
generated client library, [SETTING] = not confirmed, so a setting):
- Bearer API key; optional `on-behalf-of` header for subusers; EU base
  https://api.eu.sendgrid.com [DOC].
- GET /v3/suppression/unsubscribes, /bounces, /spam_reports: `start_time` and
  `end_time` are unix seconds, both inclusive, and `limit`/`offset` page the
  list [DOC]; `limit` sets the page size and a longer list takes further requests
  [DOC: "Retrieve all Global Suppressions"], so a page shorter than `limit` ends
  the list; at most 500 per query for bounces [DOC], so `page_size` <= 500.
  Items: unsubscribes {email, created} [LIB]; bounces {email, created, reason,
  status} where `status` is the enhanced SMTP code [DOC schema]; spam reports
  {email, created} (an `ip`, kept when present). The order is not documented.
- Bounces can be permanent or temporary [DOC]. Only a `status` of class 5
  (5.x.x) is a hard bounce; class 4 is a soft bounce and ignored; a bounce with
  no readable status follows `unclassified_bounces` [SETTING]. Blocks and
  invalid emails are not opt-outs (a block is a temporary refusal by the
  receiving server, an invalid email a malformed address): never read.
- Group suppressions: GET /v3/asm/groups lists the groups (at most 200) [DOC];
  GET /v3/asm/suppressions gives every group suppression (path: the official
  Python library; fields {email, group_id, group_name, created_at}: the sendgrid4r
  library) with no paging or time filter, so the incremental read filters it by
  `created_at` here.
- POST /v3/asm/suppressions/global and /v3/asm/groups/{id}/suppressions take
  {"recipient_emails": [...]} and answer the same shape [DOC]. A group that does
  not exist sends the addresses to the GLOBAL list [DOC]: group ids are checked
  before every group write. The per-request maximum is not published: `batch_size`
  [SETTING], halved when SendGrid answers 400 naming a limit.
- POST /v3/asm/groups/{id}/suppressions/search returns which of the given
  addresses the group already holds [DOC]: group writes report those as ALREADY.
  For the global list only GET /v3/asm/suppressions/global/{email} can tell, one
  call per address, so that check is `confirm_global` [SETTING, off]; without it a
  global write is reported APPLIED (the engine never pushes back what it read here).
- DELETE /v3/asm/suppressions/global/{email} and
  DELETE /v3/asm/groups/{id}/suppressions/{email} lift [DOC].
- Errors are {"errors": [{"field", "message"}]}; every answer carries
  X-RateLimit-Limit/-Remaining/-Reset (reset = unix time), and 429 when spent [DOC].

Incremental read: one time window per cycle, from the saved cursor (unix seconds)
minus `overlap` to now; the cursor moves to the window's end only after the whole
window is read. Offset paging over a list that shrinks meanwhile (a lift) can skip
an item; the overlap and the periodic reconcile bring it back.

Re-subscribes (issue 17): SendGrid's API cannot say who made one, so none is read. Confirmed
(twilio.com/docs/sendgrid/api-reference, found with the search tool): a re-subscribe removes the
address from the global unsubscribes or from a group's suppressions (DELETE
/v3/asm/suppressions/global/{email}, DELETE /v3/asm/groups/{group_id}/suppressions/{email}), and a
group's suppression list is a bare array of addresses; no list keeps a record of a removal, of who
made it or when. Only the Event Webhook names a recipient's own `group_resubscribe` (with
`asm_group_id` and a timestamp) [DOC, ../shared/specs/webhooks.md]; webhooks are not read here. So a
re-subscribe at SendGrid, by the recipient or by a user of the account, is drift: a reconcile
re-applies the opt-out, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, RootModel, SecretStr, field_validator

from state.errors import TransientError
from state.models import ALREADY, APPLIED, GLOBAL_SCOPE, ApplyResult, OptOut, Page, Rejected, to_utc_iso

from .base import chunks
from .http import Clock, VendorAnswer, VendorError, VendorPermanentError, generic_pause_hint
from .kit import (HttpAdapter, WindowSettings, address_or_reject, already_when_absent, filled_pages,
                  integer_topic_ids, json_body, require_topics, topic_capabilities, vendor_error)

ListName = Literal["unsubscribes", "bounces", "spam_reports", "groups"]
ALL_LISTS: tuple[ListName, ...] = ("unsubscribes", "bounces", "spam_reports", "groups")
GLOBAL = "/v3/asm/suppressions/global"
GROUPS = "/v3/asm/groups"
ALL_GROUP_SUPPRESSIONS = "/v3/asm/suppressions"
_LIMIT_WORDS = re.compile(r"\b(limit|maximum|max|too many|exceed\w*|at most)\b", re.IGNORECASE)
_INDEX = re.compile(r"\[(\d+)\]|\.(\d+)\b")


class SendGridSettings(WindowSettings):
    """Settings of a `sendgrid` adapter instance (one per SendGrid account or subuser)."""

    type: Literal["sendgrid"] = "sendgrid"
    base_url: str = "https://api.sendgrid.com"
    api_key: SecretStr = Field(
        description="A SendGrid API key with the Suppressions permission (read, and full access to write).")
    on_behalf_of: str | None = Field(default=None, min_length=1, max_length=256)
    # SendGrid publishes no per-request maximum for suppression adds.
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    page_size: int = Field(default=500, ge=1, le=500)
    read_lists: list[ListName] = Field(default_factory=lambda: list(ALL_LISTS))
    unclassified_bounces: Literal["hard_bounce", "ignore"] = "hard_bounce"
    confirm_global: bool = False
    # The signed Event Webhook's verification key (base64 DER, as SendGrid shows it); unset: no receiver.
    webhook_public_key: str | None = Field(default=None, min_length=1)

    _group_ids = integer_topic_ids("SendGrid unsubscribe group ids")

    @field_validator("read_lists")
    @classmethod
    def _distinct(cls, lists: list[str]) -> list[str]:
        return list(dict.fromkeys(lists))


# -- SendGrid's answers, as far as this adapter relies on them ------------------------------------


class Unsubscribe(VendorAnswer):
    """An item of a suppression list; the other lists' items add to it."""

    email: str
    created: int | None = None


class Bounce(Unsubscribe):
    reason: str | None = None
    status: str | None = None


class SpamReport(Unsubscribe):
    ip: str | None = None


class GroupSuppression(VendorAnswer):
    email: str
    group_id: int
    group_name: str | None = None
    created_at: int | None = None


class Group(VendorAnswer):
    id: int
    name: str = ""
    description: str | None = None
    is_default: bool | None = None


UnsubscribeList, BounceList, SpamReportList = RootModel[list[Unsubscribe]], RootModel[list[Bounce]], \
    RootModel[list[SpamReport]]
GroupSuppressionList, GroupList, AddressList = RootModel[list[GroupSuppression]], RootModel[list[Group]], \
    RootModel[list[str]]


class RecipientEmails(VendorAnswer):
    recipient_emails: list[str] = Field(default_factory=list)


class GlobalSuppression(VendorAnswer):
    recipient_email: str | None = None


LISTS: dict[str, tuple[str, type[RootModel]]] = {
    "unsubscribes": ("/v3/suppression/unsubscribes", UnsubscribeList),
    "bounces": ("/v3/suppression/bounces", BounceList),
    "spam_reports": ("/v3/suppression/spam_reports", SpamReportList),
}


def sendgrid_error(response: httpx.Response, now: float) -> VendorError:
    """SendGrid's {"errors": [{field, message}]} body, and how long a 429 asks to wait."""
    body = json_body(response)
    parts = []
    if isinstance(body.get("errors"), list):
        for error in body["errors"][:5]:
            if isinstance(error, dict) and error.get("message"):
                field = error.get("field")
                parts.append(f"{field}: {error['message']}" if field else str(error["message"]))
    error = vendor_error(response, now, "; ".join(parts), None,
                         response.headers.get("x-request-id") or response.headers.get("x-message-id"))
    if error.retry_after is None and response.status_code == 429:
        return VendorError(error.message, None, error.correlation_id, generic_pause_hint(response, now))
    return error


class SendGridAdapter(HttpAdapter):
    """Reads SendGrid's suppression lists and writes global and group suppressions."""

    settings_model = SendGridSettings
    limit_words = _LIMIT_WORDS

    def __init__(self, settings: SendGridSettings, topics: dict[str, str],
                 transport: httpx.BaseTransport | None = None, clock: Clock | None = None):
        require_topics(settings, topics)
        self._group_of = dict(settings.topics)
        self._topic_of = {group: topic for topic, group in settings.topics.items()}
        self.capabilities = topic_capabilities(settings)
        key = settings.api_key.get_secret_value()
        headers = {"Authorization": f"Bearer {key}"}
        if settings.on_behalf_of:
            headers["on-behalf-of"] = settings.on_behalf_of
        self.start(settings, headers=headers, describe_error=sendgrid_error, transport=transport, clock=clock,
                   secrets=[key])

    # -- reading -------------------------------------------------------------------------------

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        """Opt-outs created in [cursor - overlap, now], list by list; the last page carries the new cursor."""
        self.http.new_cycle()
        now = int(self.clock.time())
        previous = self.saved_text(cursor, int, "a unix timestamp in seconds")
        start = self.window_start(previous, now, lambda seconds, back: max(0, seconds - int(back)))
        yield from self._pages(start, now, seen_up_to=previous, report_unmapped=True)
        yield Page(cursor=str(now))

    def read_all(self) -> Iterator[Page]:
        """Every opt-out SendGrid holds now, page by page, for reconcile (unmapped groups are left out)."""
        return self.whole(self._pages(None, None, seen_up_to=None, report_unmapped=False))

    def _pages(self, start: int | None, end: int | None, seen_up_to: int | None,
               report_unmapped: bool) -> Iterator[Page]:
        # Strongest first: the store keeps the first staged observation of an (address, scope) of a read.
        for list_name in [n for n in ("spam_reports", "bounces", "unsubscribes", "groups")
                          if n in self.settings.read_lists]:
            if list_name == "groups":
                yield from self._group_pages(start, seen_up_to, report_unmapped)
                continue
            path, model = LISTS[list_name]
            yield from filled_pages(self._paged(path, model, start, end),
                                    lambda item, page, n=list_name: self._convert(n, item, page, seen_up_to))

    def _paged(self, path: str, model: type[RootModel], start: int | None, end: int | None) -> Iterator[list]:
        endpoint = f"GET {path}"
        window = {k: v for k, v in (("start_time", start), ("end_time", end)) if v is not None}

        def fetch(offset: int) -> tuple[list, bool]:
            items = self.get(path, model, endpoint, params={"limit": self.settings.page_size, "offset": offset,
                                                            **window}).root
            # `limit` is the page size [DOC], and `page_size` stays within SendGrid's documented
            # maximum (500): a shorter page is the last one, so no empty page is asked for.
            return items, len(items) == self.settings.page_size

        return self.offset_pages(fetch, endpoint)

    def _group_pages(self, start: int | None, seen_up_to: int | None, report_unmapped: bool) -> Iterator[Page]:
        items = self.get(ALL_GROUP_SUPPRESSIONS, GroupSuppressionList).root
        if start is not None:
            # No time filter at SendGrid for this list: keep the window's part (undated items always).
            items = [i for i in items if i.created_at is None or i.created_at >= start]
        yield from filled_pages(chunks(items, self.settings.page_size),
                                lambda item, page: self._convert("groups", item, page, seen_up_to, report_unmapped))

    def _convert(self, list_name: str, item: Any, page: Page, seen_up_to: int | None,
                 report_unmapped: bool = True) -> None:
        """One list item as an opt-out, or a listed problem (only when new since the cursor), or nothing."""
        created = item.created_at if list_name == "groups" else item.created
        fresh = seen_up_to is None or created is None or created > seen_up_to
        address = address_or_reject(item.email, page, f"SendGrid {list_name} item created at {created}", fresh)
        if address is None:
            return
        moment = None if created is None else to_utc_iso(datetime.fromtimestamp(created, timezone.utc))
        details: dict[str, Any] = {"sendgrid_list": list_name}
        if list_name == "unsubscribes":
            page.optouts.append(OptOut(address, GLOBAL_SCOPE, "unsubscribed", "recipient", moment, details))
        elif list_name == "bounces":
            kind = self._bounce_kind(item.status)
            if kind == "hard_bounce":
                details.update(bounce_status=item.status, bounce_reason=item.reason)
                page.optouts.append(OptOut(address, GLOBAL_SCOPE, "hard_bounce", "system", moment, details))
        elif list_name == "spam_reports":
            if item.ip:
                details["ip"] = item.ip
            page.optouts.append(OptOut(address, GLOBAL_SCOPE, "spam_complaint", "system", moment, details))
        else:
            topic = self._topic_of.get(str(item.group_id))
            details.update(group_id=item.group_id, group_name=item.group_name)
            if topic is not None:
                page.optouts.append(OptOut(address, topic, "unsubscribed", "recipient", moment, details))
            elif fresh and report_unmapped:
                page.rejected.append(Rejected(
                    f"SendGrid group suppression created at {created}", address,
                    f"{address}: unsubscribed from SendGrid group {item.group_id} ({item.group_name or 'no name'}), "
                    f"which no topic maps to at {self.name}; map it under topics to sync it"))

    def _bounce_kind(self, status: str | None) -> str:
        """hard_bounce for a permanent (5.x.x) status, ignore for a temporary (4.x.x) one."""
        code = (status or "").strip()
        if code[:1] == "5":
            return "hard_bounce"
        if code[:1] == "4":
            return "ignore"
        return self.settings.unclassified_bounces

    # -- writing -------------------------------------------------------------------------------

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Add each address to the global list (all email) or its topic's group; one result per item, in order."""
        outcomes = self.batch_outcomes(batch)
        global_items, by_group = self.by_target(outcomes, self._group_of, "SendGrid group id")
        try:
            if by_group:
                existing = {str(g.id) for g in self.get(GROUPS, GroupList).root}
                for group, indexes in by_group.items():
                    if group not in existing:
                        for index in indexes:
                            outcomes.refuse(index, (
                                f"SendGrid has no unsubscribe group {group} (topic {batch[index].scope!r}); not "
                                "written, since SendGrid would put the address on the global list instead"))
                        continue
                    self.send_batches(outcomes, indexes, lambda items, g=group: self._add_to_group(g, items),
                                      lambda optout, g=group: self._add_to_group(g, [optout])[0])
            if global_items:
                self.send_batches(outcomes, global_items, self._add_global, lambda o: self._add_global([o])[0])
        except TransientError as exc:
            # The group list could not be read: nothing of this batch was sent.
            outcomes.park(range(len(batch)), exc)
        return outcomes.finished()

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        """For an audited lift: delete global or group suppressions, one call each (all SendGrid offers)."""
        outcomes = self.batch_outcomes(batch)
        global_items, by_group = self.by_target(outcomes, self._group_of, "SendGrid group id")

        def delete(optout: OptOut) -> ApplyResult:
            group = self._group_of.get(optout.scope)
            name = f"{GROUPS}/{{group_id}}/suppressions/{{email}}" if group else f"{GLOBAL}/{{email}}"
            path = f"{GROUPS}/{group}/suppressions" if group else GLOBAL
            self.http.request("DELETE", f"{path}/{quote(optout.address, safe='@')}", endpoint=f"DELETE {name}")
            return ApplyResult(optout, APPLIED, "removed at SendGrid")

        self.each(outcomes, global_items + [i for indexes in by_group.values() for i in indexes], delete,
                  already_when_absent("SendGrid did not hold it"))
        return outcomes.finished(fail_when_nothing_sent=False)

    def batch_refusal_is_items(self, exc: VendorPermanentError, items: list[OptOut]) -> set[int]:
        """Positions of the batch a 400 names, by index (recipient_emails[3]) or by address."""
        text = exc.vendor_message.lower()
        named = {int(a or b) for a, b in _INDEX.findall(text)}
        named |= {p for p, o in enumerate(items) if o.address in text}
        return {p for p in named if p < len(items)}

    def _add_to_group(self, group: str, items: list[OptOut]) -> list[ApplyResult]:
        addresses = [o.address for o in items]
        search = f"{GROUPS}/{group}/suppressions/search"
        endpoint = f"POST {GROUPS}/{{group_id}}/suppressions/search"
        held = {a.strip().lower() for a in self.post(search, AddressList, endpoint,
                                                     json={"recipient_emails": addresses}).root}
        outcomes = {a: ApplyResult(o, ALREADY, f"SendGrid group {group} held it already")
                    for a, o in zip(addresses, items) if a in held}
        missing = [o for o in items if o.address not in held]
        if missing:
            self.post(f"{GROUPS}/{group}/suppressions", RecipientEmails, f"POST {GROUPS}/{{group_id}}/suppressions",
                      json={"recipient_emails": [o.address for o in missing]})
            outcomes.update({o.address: ApplyResult(o, APPLIED) for o in missing})
        return [outcomes[a] for a in addresses]

    def _add_global(self, items: list[OptOut]) -> list[ApplyResult]:
        held = self._globally_held(items) if self.settings.confirm_global else set()
        missing = [o for o in items if o.address not in held]
        if missing:
            self.post(GLOBAL, RecipientEmails, json={"recipient_emails": [o.address for o in missing]})
        return [ApplyResult(o, ALREADY, "SendGrid's global list held it already") if o.address in held
                else ApplyResult(o, APPLIED) for o in items]

    def _globally_held(self, items: list[OptOut]) -> set[str]:
        endpoint = f"GET {GLOBAL}/{{email}}"
        held = set()
        for optout in items:
            answer = self.get(f"{GLOBAL}/{quote(optout.address, safe='@')}", GlobalSuppression, endpoint)
            if (answer.recipient_email or "").strip().lower() == optout.address:
                held.add(optout.address)
        return held

    # -- operator checks --------------------------------------------------------------------------

    def probe(self) -> list[str]:
        """Verify the key with read-only calls, list the unsubscribe groups and flag unmapped ones."""
        groups = self.get(GROUPS, GroupList).root
        problems: list[str] = []
        lines = [f"{len(groups)} unsubscribe groups"] + self.topic_lines(
            {str(g.id): g.name for g in groups}, "group", problems,
            missing="which SendGrid does not have (writes to a missing group would land on the global list, so "
                    "they are refused)",
            unmapped="its suppressions are listed as rejected until a topic maps to it")
        self.refuse_if(problems)
        for list_name in self.settings.read_lists:
            if list_name != "groups":
                path = LISTS[list_name][0]
                self.http.request("GET", path, endpoint=f"GET {path}", params={"limit": 1, "offset": 0})
        lines.append(f"suppression lists readable: {', '.join(self.settings.read_lists)}")
        return lines

    def probe_needs(self, exc: BaseException) -> str | None:
        """The API key permission (scope) a refused probe lacked."""
        endpoint = str(getattr(exc, "endpoint", ""))
        listed = next((name for name, (path, _) in LISTS.items() if path in endpoint), None)
        scope = ("asm.groups.read" if GROUPS in endpoint
                 else f"suppression.read (or suppression.{listed}.read)" if listed else None)
        return scope and f"API key permission {scope}"
