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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field, RootModel, SecretStr, field_validator

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

from .base import Capabilities, Duration, chunks
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

ListName = Literal["unsubscribes", "bounces", "spam_reports", "groups"]
ALL_LISTS: tuple[ListName, ...] = ("unsubscribes", "bounces", "spam_reports", "groups")
GLOBAL = "/v3/asm/suppressions/global"
GROUPS = "/v3/asm/groups"
ALL_GROUP_SUPPRESSIONS = "/v3/asm/suppressions"
_LIMIT_WORDS = re.compile(r"\b(limit|maximum|max|too many|exceed\w*|at most)\b", re.IGNORECASE)
_INDEX = re.compile(r"\[(\d+)\]|\.(\d+)\b")


class SendGridSettings(HttpAdapterSettings):
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
    overlap: Duration = 600.0
    # None: the first read takes the whole history (it goes through max_new_per_cycle like any read).
    initial_lookback: Duration | None = None
    unclassified_bounces: Literal["hard_bounce", "ignore"] = "hard_bounce"
    confirm_global: bool = False
    # The signed Event Webhook's verification key (base64 DER, as SendGrid shows it); unset: no receiver.
    webhook_public_key: str | None = Field(default=None, min_length=1)

    @field_validator("topics")
    @classmethod
    def _group_ids(cls, topics: dict[str, str]) -> dict[str, str]:
        for topic, group in topics.items():
            if not str(group).strip().isdigit():
                raise ValueError(f"topic {topic!r}: SendGrid unsubscribe group ids are integers, got {group!r}")
        return {topic: str(group).strip() for topic, group in topics.items()}

    @field_validator("read_lists")
    @classmethod
    def _distinct(cls, lists: list[str]) -> list[str]:
        return list(dict.fromkeys(lists))


# -- SendGrid's answers, as far as this adapter relies on them ------------------------------------


_Answer = VendorAnswer  # the shared base: unknown fields ignored, ids as text


class Unsubscribe(_Answer):
    email: str
    created: int | None = None


class Bounce(_Answer):
    email: str
    created: int | None = None
    reason: str | None = None
    status: str | None = None


class SpamReport(_Answer):
    email: str
    created: int | None = None
    ip: str | None = None


class GroupSuppression(_Answer):
    email: str
    group_id: int
    group_name: str | None = None
    created_at: int | None = None


class Group(_Answer):
    id: int
    name: str = ""
    description: str | None = None
    is_default: bool | None = None


class UnsubscribeList(RootModel[list[Unsubscribe]]):
    pass


class BounceList(RootModel[list[Bounce]]):
    pass


class SpamReportList(RootModel[list[SpamReport]]):
    pass


class GroupSuppressionList(RootModel[list[GroupSuppression]]):
    pass


class GroupList(RootModel[list[Group]]):
    pass


class AddressList(RootModel[list[str]]):
    pass


class RecipientEmails(_Answer):
    recipient_emails: list[str] = Field(default_factory=list)


class GlobalSuppression(_Answer):
    recipient_email: str | None = None


class UnexpectedAnswer(VendorPermanentError):
    """A 2xx answer this adapter cannot read: an adapter-level failure, never an item's."""


LISTS: dict[str, tuple[str, type[RootModel]]] = {
    "unsubscribes": ("/v3/suppression/unsubscribes", UnsubscribeList),
    "bounces": ("/v3/suppression/bounces", BounceList),
    "spam_reports": ("/v3/suppression/spam_reports", SpamReportList),
}


def sendgrid_error(response: httpx.Response, now: float) -> VendorError:
    """SendGrid's {"errors": [{field, message}]} body, and how long a 429 asks to wait."""
    try:
        body = response.json()
    except ValueError:
        body = None
    parts = []
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        for error in body["errors"][:5]:
            if isinstance(error, dict) and error.get("message"):
                field = error.get("field")
                parts.append(f"{field}: {error['message']}" if field else str(error["message"]))
    message = "; ".join(parts) or response.reason_phrase or "no message"
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    if retry_after is None and response.status_code == 429:
        retry_after = generic_pause_hint(response, now)
    correlation = response.headers.get("x-request-id") or response.headers.get("x-message-id")
    return VendorError(message, None, correlation, retry_after)


def _iso(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return to_utc_iso(datetime.fromtimestamp(seconds, timezone.utc))




class SendGridAdapter:
    """Reads SendGrid's suppression lists and writes global and group suppressions."""

    settings_model = SendGridSettings

    def __init__(self, settings: SendGridSettings, topics: dict[str, str],
                 transport: httpx.BaseTransport | None = None, clock: Clock | None = None):
        undefined = sorted(set(settings.topics) - set(topics))
        if undefined:
            raise ValueError(f"topics {', '.join(undefined)} are not defined under [topics]")
        self.settings = settings
        self.name = settings.name
        self._group_of = dict(settings.topics)
        self._topic_of = {group: topic for topic, group in settings.topics.items()}
        self.capabilities = Capabilities(read_changes=True, read_all=True, write=True, remove=True,
                                         batch_size=settings.batch_size, scopes=frozenset(settings.topics))
        key = settings.api_key.get_secret_value()
        headers = {"Authorization": f"Bearer {key}"}
        if settings.on_behalf_of:
            headers["on-behalf-of"] = settings.on_behalf_of
        self.http = HttpClient(settings.name, settings, headers=headers, describe_error=sendgrid_error,
                               transport=transport, clock=clock, secrets=[key])
        self.clock = self.http.clock
        self._chunk_size = settings.batch_size

    def __repr__(self) -> str:
        return f"SendGridAdapter(name={self.name!r}, base_url={self.settings.base_url!r})"

    # -- reading -------------------------------------------------------------------------------

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        """Opt-outs created in [cursor - overlap, now], list by list; the last page carries the new cursor."""
        self.http.new_cycle()
        now = int(self.clock.time())
        previous = self._cursor_seconds(cursor)
        if previous is not None:
            start: int | None = max(0, previous - int(self.settings.overlap))
        elif self.settings.initial_lookback is not None:
            start = max(0, now - int(self.settings.initial_lookback))
        else:
            start = None
        yield from self._pages(start, now, seen_up_to=previous, report_unmapped=True)
        yield Page(cursor=str(now))

    def read_all(self) -> Iterator[Page]:
        """Every opt-out SendGrid holds now, page by page, for reconcile (unmapped groups are left out)."""
        self.http.new_cycle()
        for page in self._pages(None, None, seen_up_to=None, report_unmapped=False):
            if page.optouts:
                yield Page(page.optouts)

    def _pages(self, start: int | None, end: int | None, seen_up_to: int | None,
               report_unmapped: bool) -> Iterator[Page]:
        # Strongest first: the store keeps the first staged observation of an (address, scope) of a read.
        for list_name in [n for n in ("spam_reports", "bounces", "unsubscribes", "groups")
                          if n in self.settings.read_lists]:
            if list_name == "groups":
                yield from self._group_pages(start, seen_up_to, report_unmapped)
                continue
            path, model = LISTS[list_name]
            for items in self._paged(path, model, start, end):
                page = Page()
                for item in items:
                    self._convert(list_name, item, page, seen_up_to)
                if page.optouts or page.rejected:
                    yield page

    def _paged(self, path: str, model: type[RootModel], start: int | None, end: int | None) -> Iterator[list]:
        endpoint = f"GET {path}"
        offset = 0
        previous: list | None = None
        while True:
            params: dict[str, Any] = {"limit": self.settings.page_size, "offset": offset}
            if start is not None:
                params["start_time"] = start
            if end is not None:
                params["end_time"] = end
            items = self._parse(self.http.request("GET", path, endpoint=endpoint, params=params), model,
                                endpoint).root
            if not items:
                return
            if items == previous:
                # The offset was ignored: going on would loop, and counting the page again would skip one.
                raise UnexpectedAnswer(self.name, endpoint, f"the page at offset {offset} repeats the previous "
                                       "page", status=200)
            yield items
            # `limit` is the page size [DOC], and `page_size` stays within SendGrid's documented
            # maximum (500): a shorter page is the last one, so no empty page is asked for.
            if len(items) < self.settings.page_size:
                return
            offset += len(items)
            previous = items

    def _group_pages(self, start: int | None, seen_up_to: int | None, report_unmapped: bool) -> Iterator[Page]:
        endpoint = f"GET {ALL_GROUP_SUPPRESSIONS}"
        items = self._parse(self.http.request("GET", ALL_GROUP_SUPPRESSIONS, endpoint=endpoint),
                            GroupSuppressionList, endpoint).root
        if start is not None:
            # No time filter at SendGrid for this list: keep the window's part (undated items always).
            items = [i for i in items if i.created_at is None or i.created_at >= start]
        for chunk in chunks(items, self.settings.page_size):
            page = Page()
            for item in chunk:
                self._convert("groups", item, page, seen_up_to, report_unmapped)
            if page.optouts or page.rejected:
                yield page

    def _convert(self, list_name: str, item: Any, page: Page, seen_up_to: int | None,
                 report_unmapped: bool = True) -> None:
        """One list item as an opt-out, or a listed problem (only when new since the cursor), or nothing."""
        created = item.created_at if list_name == "groups" else item.created
        fresh = seen_up_to is None or created is None or created > seen_up_to
        try:
            address = normalise_address(item.email)
        except InvalidAddress as exc:
            if fresh:
                page.rejected.append(Rejected(f"SendGrid {list_name} item created at {created}", item.email,
                                              f"invalid address {item.email!r}: {exc}"))
            return
        moment = _iso(created)
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
        self.http.new_cycle()
        results: list[ApplyResult | None] = [None] * len(batch)
        global_items, by_group = self._split(batch, results)
        try:
            if by_group:
                existing = self._existing_groups()
                for group, indexes in by_group.items():
                    if group not in existing:
                        for index in indexes:
                            results[index] = ApplyResult(batch[index], PERMANENT, (
                                f"SendGrid has no unsubscribe group {group} (topic {batch[index].scope!r}); not "
                                "written, since SendGrid would put the address on the global list instead"))
                        continue
                    self._send(batch, indexes, results, lambda items, g=group: self._add_to_group(g, items),
                               lambda optout, g=group: self._add_to_group(g, [optout])[0])
            if global_items:
                self._send(batch, global_items, results, self._add_global, lambda o: self._add_global([o])[0])
        except TransientError as exc:
            # The group list could not be read: nothing of this batch was sent.
            results = [r if r is not None else ApplyResult(batch[i], TRANSIENT, str(exc))
                       for i, r in enumerate(results)]
        done = [r for r in results if r is not None]
        if len(done) != len(batch):
            raise UnexpectedAnswer(self.name, "apply", "some items got no outcome", status=None)
        if done and all(r.outcome == TRANSIENT for r in done):
            # Nothing got through within this cycle's retry budget: the engine parks the whole batch.
            raise TransientError(f"{self.name}: no item of the batch could be sent: {done[0].message}")
        return done

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        """For an audited lift: delete global or group suppressions, one call each (all SendGrid offers)."""
        self.http.new_cycle()
        results: list[ApplyResult | None] = [None] * len(batch)
        global_items, by_group = self._split(batch, results)
        plan = [(i, GLOBAL + "/{email}", f"{GLOBAL}/{{email}}") for i in global_items]
        plan += [(i, f"{GROUPS}/{group}/suppressions/{{email}}", f"{GROUPS}/{{group_id}}/suppressions/{{email}}")
                 for group, indexes in by_group.items() for i in indexes]
        for position, (index, template, name) in enumerate(plan):
            optout = batch[index]
            path = template.replace("{email}", quote(optout.address, safe="@"))
            try:
                self.http.request("DELETE", path, endpoint=f"DELETE {name}")
                results[index] = ApplyResult(optout, APPLIED, "removed at SendGrid")
            except VendorPermanentError as exc:
                if exc.status == 404:
                    results[index] = ApplyResult(optout, ALREADY, "SendGrid did not hold it")
                elif exc.status in (401, 403) or exc.status is None:
                    raise
                else:
                    results[index] = ApplyResult(optout, PERMANENT, str(exc))
            except RetryBudgetSpent as exc:
                for rest, _, _ in plan[position:]:
                    results[rest] = ApplyResult(batch[rest], TRANSIENT, str(exc))
                break
            except TransientError as exc:
                results[index] = ApplyResult(optout, TRANSIENT, str(exc))
        return [r for r in results if r is not None]

    def _split(self, batch: list[OptOut], results: list[ApplyResult | None]) -> tuple[list[int], dict[str, list[int]]]:
        global_items: list[int] = []
        by_group: dict[str, list[int]] = {}
        for index, optout in enumerate(batch):
            if optout.scope == GLOBAL_SCOPE:
                global_items.append(index)
            elif optout.scope in self._group_of:
                by_group.setdefault(self._group_of[optout.scope], []).append(index)
            else:
                results[index] = ApplyResult(optout, PERMANENT,
                                             f"topic {optout.scope!r} has no SendGrid group id at {self.name}")
        return global_items, by_group

    def _existing_groups(self) -> set[str]:
        endpoint = f"GET {GROUPS}"
        groups = self._parse(self.http.request("GET", GROUPS, endpoint=endpoint), GroupList, endpoint).root
        return {str(g.id) for g in groups}

    def _send(self, batch: list[OptOut], indexes: list[int], results: list[ApplyResult | None],
              batch_call: Callable[[list[OptOut]], list[ApplyResult]],
              single_call: Callable[[OptOut], ApplyResult]) -> None:
        """Send in chunks; halve on a 400 naming a limit; isolate refused addresses; park the rest when stuck."""
        pending = list(indexes)
        while pending:
            chunk = pending[:self._chunk_size]
            items = [batch[i] for i in chunk]
            try:
                outcomes = batch_call(items)
            except UnexpectedAnswer:
                raise
            except VendorPermanentError as exc:
                if exc.status in (401, 403) or exc.status is None:
                    raise
                if exc.status == 400 and _LIMIT_WORDS.search(exc.vendor_message) and self._chunk_size > 1:
                    self._chunk_size = max(1, self._chunk_size // 2)
                    continue
                refused = self._refused(exc, items)
                if refused and len(refused) < len(chunk):
                    for position in refused:
                        results[chunk[position]] = ApplyResult(items[position], PERMANENT, str(exc))
                    pending = [i for p, i in enumerate(chunk) if p not in refused] + pending[len(chunk):]
                    continue
                self._send_singly(batch, chunk, results, single_call)
                pending = pending[len(chunk):]
                continue
            except TransientError as exc:
                for index in pending:
                    results[index] = ApplyResult(batch[index], TRANSIENT, str(exc))
                return
            for index, outcome in zip(chunk, outcomes):
                results[index] = outcome
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
                if exc.status in (401, 403) or exc.status is None:
                    raise
                results[index] = ApplyResult(optout, PERMANENT, str(exc))
            except RetryBudgetSpent as exc:
                for rest in indexes[position:]:
                    results[rest] = ApplyResult(batch[rest], TRANSIENT, str(exc))
                return
            except TransientError as exc:
                results[index] = ApplyResult(optout, TRANSIENT, str(exc))

    @staticmethod
    def _refused(exc: VendorPermanentError, items: list[OptOut]) -> set[int]:
        """Positions of the batch a 400 names, by index (recipient_emails[3]) or by address."""
        text = exc.vendor_message.lower()
        named = {int(a or b) for a, b in _INDEX.findall(text)}
        named |= {p for p, o in enumerate(items) if o.address in text}
        return {p for p in named if p < len(items)}

    def _add_to_group(self, group: str, items: list[OptOut]) -> list[ApplyResult]:
        addresses = [o.address for o in items]
        search = f"{GROUPS}/{group}/suppressions/search"
        endpoint = f"POST {GROUPS}/{{group_id}}/suppressions/search"
        held = {a.strip().lower() for a in self._parse(
            self.http.request("POST", search, endpoint=endpoint, json={"recipient_emails": addresses}),
            AddressList, endpoint).root}
        outcomes = {a: ApplyResult(o, ALREADY, f"SendGrid group {group} held it already")
                    for a, o in zip(addresses, items) if a in held}
        missing = [o for o in items if o.address not in held]
        if missing:
            path = f"{GROUPS}/{group}/suppressions"
            endpoint = f"POST {GROUPS}/{{group_id}}/suppressions"
            self._parse(self.http.request("POST", path, endpoint=endpoint,
                                          json={"recipient_emails": [o.address for o in missing]}),
                        RecipientEmails, endpoint)
            outcomes.update({o.address: ApplyResult(o, APPLIED) for o in missing})
        return [outcomes[a] for a in addresses]

    def _add_global(self, items: list[OptOut]) -> list[ApplyResult]:
        held = self._globally_held(items) if self.settings.confirm_global else set()
        missing = [o for o in items if o.address not in held]
        if missing:
            endpoint = f"POST {GLOBAL}"
            self._parse(self.http.request("POST", GLOBAL, endpoint=endpoint,
                                          json={"recipient_emails": [o.address for o in missing]}),
                        RecipientEmails, endpoint)
        return [ApplyResult(o, ALREADY, "SendGrid's global list held it already") if o.address in held
                else ApplyResult(o, APPLIED) for o in items]

    def _globally_held(self, items: list[OptOut]) -> set[str]:
        endpoint = f"GET {GLOBAL}/{{email}}"
        held = set()
        for optout in items:
            answer = self._parse(self.http.request("GET", f"{GLOBAL}/{quote(optout.address, safe='@')}",
                                                   endpoint=endpoint), GlobalSuppression, endpoint)
            if (answer.recipient_email or "").strip().lower() == optout.address:
                held.add(optout.address)
        return held

    # -- operator checks --------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Verify the key with read-only calls, list the unsubscribe groups and flag unmapped ones."""
        self.http.new_cycle()
        endpoint = f"GET {GROUPS}"
        groups = self._parse(self.http.request("GET", GROUPS, endpoint=endpoint), GroupList, endpoint).root
        known = {str(g.id): g for g in groups}
        lines = [f"{len(groups)} unsubscribe groups"]
        problems = []
        for topic, group in sorted(self._group_of.items()):
            if group in known:
                lines.append(f"topic {topic} -> group {group} ({known[group].name})")
            else:
                problems.append(f"topic {topic} maps to group {group}, which SendGrid does not have (writes to a "
                                "missing group would land on the global list, so they are refused)")
        for group in groups:
            if str(group.id) not in self._topic_of:
                lines.append(f"UNMAPPED: group {group.id} ({group.name}); its suppressions are listed as rejected "
                             "until a topic maps to it")
        if problems:
            raise ConfigError(f"{self.name}: " + "; ".join(problems))
        for list_name in self.settings.read_lists:
            if list_name != "groups":
                path = LISTS[list_name][0]
                self.http.request("GET", path, endpoint=f"GET {path}", params={"limit": 1, "offset": 0})
        lines.append(f"suppression lists readable: {', '.join(self.settings.read_lists)}")
        return lines

    def probe_refusal(self, exc: BaseException) -> str | None:
        """Why a check() probe was refused: the API key, or the permission (scope) it lacks."""
        endpoint = str(getattr(exc, "endpoint", ""))
        listed = next((name for name, (path, _) in LISTS.items() if path in endpoint), None)
        scope = ("asm.groups.read" if GROUPS in endpoint
                 else f"suppression.read (or suppression.{listed}.read)" if listed else None)
        return explain_refusal(exc, "api_key", scope and f"API key permission {scope}")

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    # -- small helpers -----------------------------------------------------------------------------

    def _cursor_seconds(self, cursor: str | None) -> int | None:
        if cursor is None:
            return None
        try:
            return int(cursor)
        except ValueError:
            raise VendorPermanentError(self.name, "read cursor", f"the saved cursor {cursor!r} is not a unix "
                                       "timestamp in seconds") from None

    def _parse(self, response: httpx.Response, model: type, endpoint: str):
        try:
            return self.http.parse(response, model, endpoint)
        except VendorPermanentError as exc:
            raise UnexpectedAnswer(self.name, endpoint, exc.vendor_message, status=exc.status) from None
