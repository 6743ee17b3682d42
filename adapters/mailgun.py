"""`mailgun`: two-way opt-out sync with one Mailgun sending domain's suppression lists.

Reads unsubscribes (tags as topics), hard bounces and spam complaints; writes
unsubscribes in batches. Several sending domains are several adapter instances.

What this relies on from Mailgun's API reference ([DOC]), its official client
libraries ([LIB]) and reports of its behaviour ([SEEN]):
- [DOC] Base URL https://api.mailgun.net, EU region https://api.eu.mailgun.net; HTTP Basic
  user `api`, password the API key; every suppression list belongs to one sending domain.
- [DOC] `GET /v3/{domain}/unsubscribes|bounces|complaints` take `limit` (default 100,
  max 1000), `page` (next/previous/last) with `address` as the divider, and `term`; there is
  no changed-since filter. Answers are `{items, paging: {first, next, previous, last}}`
  with full URLs; `created_at` is RFC 822. Items: unsubscribes `{address, tags,
  created_at}`, bounces `{address, code, error, created_at}`, complaints `{address,
  created_at}`.
- [DOC] The bounce list holds permanent failures only: soft bounces (mailbox full) and
  other failures are not added to it. Defensively, an entry whose SMTP code is 4xx (a
  temporary failure by RFC 5321, e.g. imported by hand) is ignored too.
- [DOC] `POST /v3/{domain}/unsubscribes` takes a JSON array of up to 1000 records `{address,
  tags, created_at}` and answers `{message}` only (no per-record result); `tags: ["*"]`
  means all mail from the domain. [SEEN] (mailgun/documentation#300, mailgun.js#365) in a
  JSON array only `tags` (plural) is honoured and a new tag is added to the record's
  existing tags; this adapter sends one record per address with all its tags.
- [LIB] (mailgun-go) `DELETE /v3/{domain}/unsubscribes/{address}?tag=T` removes one tag only;
  [DOC] 404 when there is nothing to remove. [DOC] `GET /v4/domains/{name}` is a read-only
  domain lookup. [DOC] Errors are `{"message": ...}`; 429 means "retry as defined in the
  response" (no header is named: Retry-After and the usual X-RateLimit-* are honoured when
  present); 5xx is to be retried with back-off. [DOC] Tags are case-insensitive.

Incremental read: with no changed-since filter the lists are swept whole, at most
`max_pages_per_cycle` pages per cycle, the cursor remembering the list and paging divider
so the next cycle goes on where this one stopped; the store's diff finds what is new.
Problems (invalid addresses, unmapped tags) are listed only for items newer than the
previous sweep, so a sweep does not list them again. Unknowns kept as settings: batch and
page size (documented maxima as defaults), the pacing, the origin of unsubscribes.

Re-subscribes (issue 17): Mailgun's API cannot say who made one, so none is read. Confirmed
(documentation.mailgun.com, Unsubscribe API, found with the search tool): removing an unsubscribe
(DELETE /v3/{domain}/unsubscribes/{address}, or in the control panel) deletes the record, "delivery
... resumes until it unsubscribes again"; a record has only `address`, `tags` and `created_at`, and
nothing lists removals. So a re-subscribe at Mailgun is drift: a reconcile re-applies the opt-out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from itertools import islice
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
from pydantic import Field, SecretStr, field_validator

from state.models import APPLIED, GLOBAL_SCOPE, PERMANENT, ApplyResult, OptOut, Page, Rejected, to_utc_iso

from .base import Duration
from .http import Clock, HttpAdapterSettings, VendorAnswer, VendorError, generic_pause_hint, parse_http_date
from .kit import (HttpAdapter, UnexpectedAnswer, address_or_reject, already_when_absent, basic_auth, cursor_text,
                  distinct_ids, filled_pages, json_body, parse_time, require_topics, topic_capabilities, vendor_error)

LISTS = ("unsubscribes", "bounces", "complaints")
ALL_TAGS = "*"
MAX_RECORDS = 1000  # [DOC] records per JSON add, and items per list page
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
Item = TypeVar("Item")


class MailgunSettings(HttpAdapterSettings):
    """Settings of a `mailgun` adapter instance (one per sending domain).

    `topics` maps a topic key to the Mailgun tag whose unsubscribes stand for it.
    """

    type: Literal["mailgun"] = "mailgun"
    base_url: str = "https://api.mailgun.net"  # EU region: https://api.eu.mailgun.net
    api_key: SecretStr = Field(description="A Mailgun private API key (or a domain sending key).")
    domain: str = Field(description="The sending domain whose suppressions this adapter keeps.",
                        examples=["mg.example.com"])
    batch_size: int = Field(default=MAX_RECORDS, ge=1, le=MAX_RECORDS)
    page_size: int = Field(default=MAX_RECORDS, ge=1, le=MAX_RECORDS)
    # Requests one incremental read may make; the sweep goes on next cycle from where it stopped.
    max_pages_per_cycle: int = Field(default=100, ge=1)
    # Pages of unsubscribes `check` scans to list the tags in use.
    check_pages: int = Field(default=10, ge=1)
    # Mailgun's unsubscribe list is documented as recipients who used the unsubscribe link;
    # set "user" where it is mostly filled by hand or by import.
    unsubscribe_origin: Literal["recipient", "user"] = "recipient"
    # Items this much older than the previous sweep's start still count as new for listing problems.
    listing_overlap: Duration = 600.0
    # The Webhook Signing Key: its webhooks are received at /hooks/<name> when set.
    webhook_secret: SecretStr | None = None

    @field_validator("domain")
    @classmethod
    def _domain_name(cls, value: str) -> str:
        name = value.strip().lower().rstrip(".")
        if not _DOMAIN.match(name):
            raise ValueError(f"expected a sending domain such as 'mg.example.com', got {value!r}")
        return name

    @field_validator("topics")
    @classmethod
    def _tags(cls, topics: dict[str, str]) -> dict[str, str]:
        return distinct_ids(topics, lambda tag: 0 < len(tag) <= 128 and tag != ALL_TAGS,
                            "a Mailgun tag of 1-128 characters other than '*'", "Mailgun tag", fold=str.lower,
                            note=" (tags are case-insensitive)")


# -- Mailgun's answers, as far as this adapter relies on them ------------------------------------


class Paging(VendorAnswer):
    next: str | None = None


class ComplaintItem(VendorAnswer):
    """An item of a suppression list; the other lists' items add to it."""

    address: str
    created_at: str | None = None


class UnsubscribeItem(ComplaintItem):
    # Documented as an array; the single-record lookup has been seen to give a bare string.
    tags: list[str] | str | None = None

    def tag_list(self) -> list[str]:
        """The record's tags, stripped, empty ones left out."""
        tags = [self.tags] if isinstance(self.tags, str) else list(self.tags or [])
        return [t.strip() for t in tags if t and t.strip()]


class BounceItem(ComplaintItem):
    code: str | None = None
    error: str | None = None


class ListPage(VendorAnswer, Generic[Item]):
    items: list[Item]
    paging: Paging | None = None


class DomainAnswer(VendorAnswer):
    domain: dict[str, Any]


PAGE_MODELS: dict[str, type[VendorAnswer]] = {"unsubscribes": ListPage[UnsubscribeItem],
                                               "bounces": ListPage[BounceItem], "complaints": ListPage[ComplaintItem]}


@dataclass
class Sweep:
    """Where an incremental sweep of the three lists stands (the saved cursor, as JSON)."""

    list_name: str = LISTS[0]
    next_params: dict[str, str] | None = None
    started_at: str | None = None
    # Start of the previous complete sweep: items older than it were listed then.
    listed_before: str | None = None

    def dump(self) -> str:
        return cursor_text(list=self.list_name, next=self.next_params, started=self.started_at,
                           listed_before=self.listed_before)

    @staticmethod
    def load(saved: dict) -> "Sweep":
        """A sweep from a saved cursor's fields; a ValueError when they are not ones `dump` writes."""
        next_params = saved.get("next")
        if saved.get("list") not in LISTS:
            raise ValueError("unknown cursor version or list")
        if next_params is not None and not (isinstance(next_params, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in next_params.items())):
            raise ValueError("paging parameters are not text")
        return Sweep(saved["list"], next_params, saved.get("started"), saved.get("listed_before"))


@dataclass
class _Record:
    """One unsubscribe record to send: an address with every tag the batch asks for."""

    address: str
    tags: set[str] = field(default_factory=set)
    indexes: list[int] = field(default_factory=list)
    created_at: datetime | None = None

    def body(self, now: datetime) -> dict[str, Any]:
        return {"address": self.address, "tags": sorted(self.tags),
                "created_at": format_datetime((self.created_at or now).astimezone(timezone.utc), usegmt=True)}


def mailgun_error(response: httpx.Response, now: float) -> VendorError:
    """Mailgun's `{"message": ...}` body (or its plain-text body) and any Retry-After."""
    message = json_body(response).get("message")
    if not message and response.text.strip() and not response.text.lstrip().startswith("<"):
        message = response.text.strip()[:300]
    return vendor_error(response, now, str(message) if message else None)


class MailgunAdapter(HttpAdapter):
    """Reads a sending domain's unsubscribes, bounces and complaints; writes unsubscribes."""

    settings_model = MailgunSettings
    shown = ("base_url", "domain")

    def __init__(self, settings: MailgunSettings, topics: dict[str, str],
                 transport: httpx.BaseTransport | None = None, clock: Clock | None = None):
        require_topics(settings, topics)
        self._tag_of = dict(settings.topics)
        self._topic_of_tag = {tag.lower(): topic for topic, tag in settings.topics.items()}
        self.capabilities = topic_capabilities(settings)
        self.start(settings, **basic_auth("api", settings.api_key.get_secret_value()), describe_error=mailgun_error,
                   pause_hint=generic_pause_hint, transport=transport, clock=clock)
        self._domain_path = quote(settings.domain, safe="")

    # -- reading --------------------------------------------------------------------------------------

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        """The next pages of a sweep over the three lists, at most `max_pages_per_cycle` per call.

        Mailgun has no changed-since filter, so every sweep reads the lists whole and the
        store keeps only what it did not hold; a sweep finished within a call ends it.
        """
        self.http.new_cycle()
        sweep = self.load_cursor(cursor, Sweep.load, reset="start a new sweep") or Sweep()
        if sweep.started_at is None:
            sweep.started_at = self.now().isoformat()
        listed_before = parse_time(sweep.listed_before)
        if listed_before is not None:
            listed_before -= timedelta(seconds=self.settings.listing_overlap)
        for _ in range(self.settings.max_pages_per_cycle):
            items, next_params = self._list_page(sweep.list_name, sweep.next_params)
            page = Page()
            for item in items:
                self._convert(sweep.list_name, item, page, listed_before)
            if items:
                sweep.next_params = next_params
                page.cursor = sweep.dump()
                yield page
                continue
            # An empty page ends this list; the last list ends the sweep, and this call.
            position = LISTS.index(sweep.list_name)
            if position + 1 < len(LISTS):
                sweep = Sweep(LISTS[position + 1], None, sweep.started_at, sweep.listed_before)
                yield Page(cursor=sweep.dump())
                continue
            yield Page(cursor=Sweep(listed_before=sweep.started_at).dump())
            return

    def read_all(self) -> Iterator[Page]:
        """Every unsubscribe, hard bounce and complaint of the domain, page by page (for reconcile)."""
        # Problems were listed by the incremental reads when first seen.
        return self.whole(page for name in LISTS for page in filled_pages(self._list_pages(name), (
            lambda item, page, n=name: self._convert(n, item, page, listed_before=None, list_problems=False))))

    def _list_pages(self, list_name: str) -> Iterator[list[Any]]:
        """The pages of a list from its start, up to the first empty one."""
        return self.follow(lambda params: self._list_page(list_name, params), f"GET /v3/{{domain}}/{list_name}")

    def _list_page(self, list_name: str, params: dict[str, str] | None) -> tuple[list[Any], dict[str, str] | None]:
        """One page of a list and the query of its `paging.next` URL (None after an empty page: the end)."""
        path = f"/v3/{self._domain_path}/{list_name}"
        endpoint = f"GET /v3/{{domain}}/{list_name}"
        query = {**(params or {}), "limit": str(self.settings.page_size)}
        answer = self.get(path, PAGE_MODELS[list_name], endpoint, params=query)
        next_params = self._next_params(answer.paging, list_name, endpoint)
        if answer.items and next_params == (params or {}):
            raise UnexpectedAnswer(self.name, endpoint, "paging.next repeats the page just read", status=200)
        return answer.items, next_params if answer.items else None

    def _next_params(self, paging: Paging | None, list_name: str, endpoint: str) -> dict[str, str]:
        # Only the query of paging.next is used, against the configured host: the API key is never
        # sent wherever an answer might point.
        if paging is None or not paging.next:
            raise UnexpectedAnswer(self.name, endpoint, "the answer has no paging.next URL", status=200)
        parts = urlsplit(paging.next)
        if not parts.path.rstrip("/").endswith(f"/{list_name}"):
            raise UnexpectedAnswer(self.name, endpoint, f"paging.next points to another resource "
                                   f"({parts.path!r})", status=200)
        return {key: value for key, value in parse_qsl(parts.query) if key != "limit"}

    def _convert(self, list_name: str, item: Any, page: Page, listed_before: datetime | None,
                 list_problems: bool = True) -> None:
        """Turn one list item into opt-outs, or a listed problem when it is new since the last sweep."""
        created = parse_http_date(item.created_at)
        occurred = to_utc_iso(created) if created else None
        new = list_problems and (listed_before is None or (created is not None and created > listed_before))
        where = f"{list_name} of {self.settings.domain}"
        address = address_or_reject(item.address, page, where, new)
        if address is None:
            return
        if list_name == "bounces":
            code = (item.code or "").strip()
            if code.startswith("4"):
                return  # a temporary (soft) failure: not an opt-out
            page.optouts.append(OptOut(address, GLOBAL_SCOPE, "hard_bounce", "system", occurred,
                                       {"mailgun_code": code or None, "mailgun_error": item.error or None}))
            return
        if list_name == "complaints":
            page.optouts.append(OptOut(address, GLOBAL_SCOPE, "spam_complaint", "system", occurred))
            return
        tags = item.tag_list()
        origin = self.settings.unsubscribe_origin
        if not tags or ALL_TAGS in tags:
            page.optouts.append(OptOut(address, GLOBAL_SCOPE, "unsubscribed", origin, occurred,
                                       {"mailgun_tags": tags or [ALL_TAGS]}))
        for tag in tags:
            if tag == ALL_TAGS:
                continue
            topic = self._topic_of_tag.get(tag.lower())
            if topic is not None:
                page.optouts.append(OptOut(address, topic, "unsubscribed", origin, occurred, {"mailgun_tag": tag}))
            elif new and ALL_TAGS not in tags:
                page.rejected.append(Rejected(where, address, (
                    f"{address}: unsubscribed from Mailgun tag {tag!r}, which no topic maps to at {self.name}; "
                    "map it under topics to sync it")))

    # -- writing ----------------------------------------------------------------------------------------

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Add each opt-out to the domain's unsubscribes (tag `*` or the topic's tag); one result per item.

        Mailgun's batch add answers for the whole request, so success is APPLIED for
        each item (it cannot tell which addresses it held already); an add is idempotent.
        """
        outcomes = self.batch_outcomes(batch)
        records: dict[str, _Record] = {}
        for index, optout in enumerate(batch):
            tag = self._tag(optout)
            if tag is None:
                outcomes.refuse(index, self.unmapped(optout.scope, "Mailgun tag"))
                continue
            record = records.setdefault(optout.address, _Record(optout.address))
            record.tags.add(tag)
            record.indexes.append(index)
            moment = parse_time(optout.occurred_at)
            if moment is not None and (record.created_at is None or moment < record.created_at):
                record.created_at = moment

        def add(part: list[_Record]) -> None:
            now = self.now()
            self.http.request("POST", f"/v3/{self._domain_path}/unsubscribes",
                              endpoint="POST /v3/{domain}/unsubscribes", json=[r.body(now) for r in part])
            for index in (i for r in part for i in r.indexes):
                outcomes.set(index, APPLIED)

        # A 404 is no such domain: the adapter, not these addresses.
        self.send_halving(list(records.values()), self.settings.batch_size, add,
                          lambda part, exc: [outcomes.set(i, PERMANENT, str(exc)) for r in part for i in r.indexes],
                          lambda part, why: outcomes.park([i for r in part for i in r.indexes], why),
                          "not sent: an earlier request of this batch could not be sent in this cycle", fatal=(404,))
        return outcomes.finished()

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        """For an audited lift: remove only the lifted tag (`*` or the topic's) from each address.

        Never a whole record: that would also lift tags this lift is not about.
        """
        def delete(optout: OptOut) -> ApplyResult:
            tag = self._tag(optout)
            if tag is None:
                return ApplyResult(optout, PERMANENT, self.unmapped(optout.scope, "Mailgun tag"))
            path = f"/v3/{self._domain_path}/unsubscribes/{quote(optout.address, safe='@')}"
            self.http.request("DELETE", path, endpoint="DELETE /v3/{domain}/unsubscribes/{address}",
                              params={"tag": tag})
            return ApplyResult(optout, APPLIED)

        return self.one_call_each(batch, delete, already_when_absent(
            lambda o: f"Mailgun holds no unsubscribe with tag {self._tag(o)!r}"))

    def _tag(self, optout: OptOut) -> str | None:
        return ALL_TAGS if optout.scope == GLOBAL_SCOPE else self._tag_of.get(optout.scope)

    # -- operator checks --------------------------------------------------------------------------------

    def probe(self) -> list[str]:
        """Look the domain up, probe the three lists and list the tags unsubscribes use; changes nothing."""
        answer = self.get(f"/v4/domains/{self._domain_path}", DomainAnswer, "GET /v4/domains/{name}")
        lines = [f"domain {self.settings.domain}: {answer.domain.get('state') or 'state not reported'}"]
        counts: dict[str, int] = {}
        spelled: dict[str, str] = {}
        scanned = 0
        for items in islice(self._list_pages("unsubscribes"), self.settings.check_pages):
            scanned += len(items)
            for item in items:
                for tag in {t for t in item.tag_list() if t != ALL_TAGS}:
                    counts[tag.lower()] = counts.get(tag.lower(), 0) + 1
                    spelled.setdefault(tag.lower(), tag)
        lines.append(f"unsubscribes: readable ({scanned} scanned for tags)")
        for topic, tag in sorted(self._tag_of.items()):
            seen = counts.get(tag.lower(), 0)
            lines.append(f"topic {topic} -> tag {tag!r} ({seen} unsubscribes seen)" if seen
                         else f"topic {topic} -> tag {tag!r} (no unsubscribes with it seen yet)")
        for key in sorted(set(counts) - set(self._topic_of_tag)):
            lines.append(f"UNMAPPED: tag {spelled[key]!r} ({counts[key]} unsubscribes); not synced until a topic "
                         "maps to it")
        for list_name in ("bounces", "complaints"):
            self._list_page(list_name, None)
            lines.append(f"{list_name}: readable")
        return lines

    def probe_missing(self, endpoint: str) -> str | None:
        """A domain not in the account (or in the other region)."""
        return (f"domain {self.settings.domain} is not in this Mailgun account (check `domain`, and `base_url` for "
                "an EU domain)" if "/domains/" in endpoint else None)

    def probe_needs(self, exc: BaseException) -> str | None:
        return f"access to domain {self.settings.domain}"
