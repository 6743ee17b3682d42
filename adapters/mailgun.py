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
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
from pydantic import BaseModel, Field, SecretStr, field_validator

from state.addresses import InvalidAddress, normalise_address
from state.errors import TransientError
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
    generic_pause_hint,
    parse_retry_after,
)

LISTS = ("unsubscribes", "bounces", "complaints")
ALL_TAGS = "*"
MAX_RECORDS = 1000  # [DOC] records per JSON add, and items per list page
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
CURSOR_VERSION = 1


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
        seen: dict[str, str] = {}
        for topic, tag in topics.items():
            tag = str(tag).strip()
            if not tag or tag == ALL_TAGS or len(tag) > 128:
                raise ValueError(f"topic {topic!r}: expected a Mailgun tag of 1-128 characters other than "
                                 f"'*', got {tag!r}")
            if tag.lower() in seen:
                raise ValueError(f"topics {seen[tag.lower()]!r} and {topic!r} map to the same Mailgun tag "
                                 f"{tag!r} (tags are case-insensitive)")
            seen[tag.lower()] = topic
        return {topic: str(tag).strip() for topic, tag in topics.items()}


# -- Mailgun's answers, as far as this adapter relies on them ------------------------------------


_Answer = VendorAnswer  # the shared base: unknown fields ignored, ids as text


class Paging(_Answer):
    next: str | None = None


class UnsubscribeItem(_Answer):
    address: str
    # Documented as an array; the single-record lookup has been seen to give a bare string.
    tags: list[str] | str | None = None
    created_at: str | None = None


class BounceItem(_Answer):
    address: str
    code: str | None = None
    error: str | None = None
    created_at: str | None = None


class ComplaintItem(_Answer):
    address: str
    created_at: str | None = None


class UnsubscribePage(_Answer):
    items: list[UnsubscribeItem]
    paging: Paging | None = None


class BouncePage(_Answer):
    items: list[BounceItem]
    paging: Paging | None = None


class ComplaintPage(_Answer):
    items: list[ComplaintItem]
    paging: Paging | None = None


class DomainAnswer(_Answer):
    domain: dict[str, Any]


PAGE_MODELS: dict[str, type[_Answer]] = {"unsubscribes": UnsubscribePage, "bounces": BouncePage,
                                         "complaints": ComplaintPage}


class UnexpectedAnswer(VendorPermanentError):
    """A 2xx answer that this adapter cannot read: an adapter-level failure, never an item's."""


@dataclass
class Sweep:
    """Where an incremental sweep of the three lists stands (the saved cursor, as JSON)."""

    list_name: str = LISTS[0]
    next_params: dict[str, str] | None = None
    started_at: str | None = None
    # Start of the previous complete sweep: items older than it were listed then.
    listed_before: str | None = None

    def dump(self) -> str:
        return json.dumps({"v": CURSOR_VERSION, "list": self.list_name, "next": self.next_params,
                           "started": self.started_at, "listed_before": self.listed_before},
                          sort_keys=True, separators=(",", ":"))


@dataclass
class _Record:
    """One unsubscribe record to send: an address with every tag the batch asks for."""

    address: str
    tags: set[str] = field(default_factory=set)
    indexes: list[int] = field(default_factory=list)
    created_at: datetime | None = None

    def body(self, now: datetime) -> dict[str, Any]:
        return {"address": self.address, "tags": sorted(self.tags),
                "created_at": format_datetime(self.created_at or now, usegmt=True)}


# -- error and time reading --------------------------------------------------------------------------


def mailgun_error(response: httpx.Response, now: float) -> VendorError:
    """Mailgun's `{"message": ...}` body (or its plain-text body) and any Retry-After."""
    message = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        message = str(body["message"])
    elif response.text.strip() and not response.text.lstrip().startswith("<"):
        message = response.text.strip()[:300]
    return VendorError(message or response.reason_phrase or "no message",
                       retry_after=parse_retry_after(response.headers.get("retry-after"), now))


def parse_rfc822(text: str | None) -> datetime | None:
    """A timezone-aware datetime from Mailgun's RFC 822 `created_at`; None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _iso_to_datetime(text: str | None) -> datetime | None:
    """A UTC datetime from the store's ISO text (naive taken as UTC); None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


# -- the adapter ----------------------------------------------------------------------------------------


class MailgunAdapter:
    """Reads a sending domain's unsubscribes, bounces and complaints; writes unsubscribes."""

    settings_model = MailgunSettings

    def __init__(self, settings: MailgunSettings, topics: dict[str, str],
                 transport: httpx.BaseTransport | None = None, clock: Clock | None = None):
        undefined = sorted(set(settings.topics) - set(topics))
        if undefined:
            raise ValueError(f"topics {', '.join(undefined)} are not defined under [topics]")
        self.settings = settings
        self.name = settings.name
        self._tag_of = dict(settings.topics)
        self._topic_of_tag = {tag.lower(): topic for topic, tag in settings.topics.items()}
        self.capabilities = Capabilities(read_changes=True, read_all=True, write=True, remove=True,
                                         batch_size=settings.batch_size, scopes=frozenset(settings.topics))
        key = settings.api_key.get_secret_value()
        basic = base64.b64encode(f"api:{key}".encode()).decode()
        self.http = HttpClient(settings.name, settings, headers={"Authorization": f"Basic {basic}"},
                               describe_error=mailgun_error, pause_hint=generic_pause_hint, transport=transport,
                               clock=clock, secrets=[key, basic])
        self.clock = self.http.clock
        self._domain_path = quote(settings.domain, safe="")

    def __repr__(self) -> str:
        return (f"MailgunAdapter(name={self.name!r}, base_url={self.settings.base_url!r}, "
                f"domain={self.settings.domain!r})")

    # -- reading --------------------------------------------------------------------------------------

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        """The next pages of a sweep over the three lists, at most `max_pages_per_cycle` per call.

        Mailgun has no changed-since filter, so every sweep reads the lists whole and the
        store keeps only what it did not hold; a sweep finished within a call ends it.
        """
        self.http.new_cycle()
        sweep = self._load_sweep(cursor)
        if sweep.started_at is None:
            sweep.started_at = self._now().isoformat()
        listed_before = _iso_to_datetime(sweep.listed_before)
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
        self.http.new_cycle()
        for list_name in LISTS:
            params: dict[str, str] | None = None
            while True:
                items, next_params = self._list_page(list_name, params)
                if not items:
                    break
                page = Page()
                for item in items:
                    # Problems were listed by the incremental reads when first seen.
                    self._convert(list_name, item, page, listed_before=None, list_problems=False)
                if page.optouts:
                    yield Page(page.optouts)
                params = next_params

    def _load_sweep(self, cursor: str | None) -> Sweep:
        if cursor is None:
            return Sweep()
        try:
            saved = json.loads(cursor)
            if saved.get("v") != CURSOR_VERSION or saved.get("list") not in LISTS:
                raise ValueError("unknown cursor version or list")
            next_params = saved.get("next")
            if next_params is not None and not (isinstance(next_params, dict) and all(
                    isinstance(k, str) and isinstance(v, str) for k, v in next_params.items())):
                raise ValueError("paging parameters are not text")
            return Sweep(saved["list"], next_params, saved.get("started"), saved.get("listed_before"))
        except (ValueError, TypeError, AttributeError) as exc:
            raise VendorPermanentError(self.name, "read cursor", f"the saved cursor is not one this adapter "
                                       f"wrote ({exc}); reset it to start a new sweep") from None

    def _list_page(self, list_name: str, params: dict[str, str] | None) -> tuple[list[Any], dict[str, str]]:
        """One page of a list and the query of its `paging.next` URL."""
        path = f"/v3/{self._domain_path}/{list_name}"
        endpoint = f"GET /v3/{{domain}}/{list_name}"
        query = {**(params or {}), "limit": str(self.settings.page_size)}
        answer = self._parse(self.http.request("GET", path, endpoint=endpoint, params=query),
                             PAGE_MODELS[list_name], endpoint)
        next_params = self._next_params(answer.paging, list_name, endpoint)
        if answer.items and next_params == (params or {}):
            raise UnexpectedAnswer(self.name, endpoint, "paging.next repeats the page just read", status=200)
        return answer.items, next_params

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
        created = parse_rfc822(item.created_at)
        occurred = to_utc_iso(created) if created else None
        new = list_problems and (listed_before is None or (created is not None and created > listed_before))
        where = f"{list_name} of {self.settings.domain}"
        try:
            address = normalise_address(item.address)
        except InvalidAddress as exc:
            if new:
                page.rejected.append(Rejected(where, item.address, f"invalid address {item.address!r}: {exc}"))
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
        tags = [item.tags] if isinstance(item.tags, str) else list(item.tags or [])
        tags = [t.strip() for t in tags if t and t.strip()]
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
        self.http.new_cycle()
        results: list[ApplyResult | None] = [None] * len(batch)
        records: dict[str, _Record] = {}
        for index, optout in enumerate(batch):
            tag = ALL_TAGS if optout.scope == GLOBAL_SCOPE else self._tag_of.get(optout.scope)
            if tag is None:
                results[index] = ApplyResult(optout, PERMANENT,
                                             f"topic {optout.scope!r} has no Mailgun tag at {self.name}")
                continue
            record = records.setdefault(optout.address, _Record(optout.address))
            record.tags.add(tag)
            record.indexes.append(index)
            moment = _iso_to_datetime(optout.occurred_at)
            if moment is not None and (record.created_at is None or moment < record.created_at):
                record.created_at = moment
        pending = list(records.values())
        for start in range(0, len(pending), self.settings.batch_size):
            if not self._add(batch, pending[start:start + self.settings.batch_size], results):
                for record in pending[start + self.settings.batch_size:]:
                    for index in record.indexes:
                        results[index] = ApplyResult(batch[index], TRANSIENT, "not sent: an earlier request of "
                                                     "this batch could not be sent in this cycle")
                break
        return self._finished(batch, results)

    def _add(self, batch: list[OptOut], records: list[_Record], results: list[ApplyResult | None]) -> bool:
        """POST records; a refused request is split in halves until the refused records stand alone.

        Returns False when a transient failure means the rest should wait for the next cycle.
        """
        path = f"/v3/{self._domain_path}/unsubscribes"
        endpoint = "POST /v3/{domain}/unsubscribes"
        now = self._now()
        try:
            self.http.request("POST", path, endpoint=endpoint, json=[r.body(now) for r in records])
        except VendorPermanentError as exc:
            if exc.status in (401, 403, 404) or exc.status is None:
                raise  # bad key, no access or no such domain: the adapter, not these addresses
            if len(records) > 1:
                middle = len(records) // 2
                return self._add(batch, records[:middle], results) and self._add(batch, records[middle:], results)
            for index in records[0].indexes:
                results[index] = ApplyResult(batch[index], PERMANENT, str(exc))
            return True
        except TransientError as exc:
            for record in records:
                for index in record.indexes:
                    results[index] = ApplyResult(batch[index], TRANSIENT, str(exc))
            return False
        for record in records:
            for index in record.indexes:
                results[index] = ApplyResult(batch[index], APPLIED)
        return True

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        """For an audited lift: remove only the lifted tag (`*` or the topic's) from each address.

        Never a whole record: that would also lift tags this lift is not about.
        """
        self.http.new_cycle()
        results: list[ApplyResult | None] = [None] * len(batch)
        endpoint = "DELETE /v3/{domain}/unsubscribes/{address}"
        for position, optout in enumerate(batch):
            tag = ALL_TAGS if optout.scope == GLOBAL_SCOPE else self._tag_of.get(optout.scope)
            if tag is None:
                results[position] = ApplyResult(optout, PERMANENT,
                                                f"topic {optout.scope!r} has no Mailgun tag at {self.name}")
                continue
            path = f"/v3/{self._domain_path}/unsubscribes/{quote(optout.address, safe='@')}"
            try:
                self.http.request("DELETE", path, endpoint=endpoint, params={"tag": tag})
            except VendorPermanentError as exc:
                if exc.status in (401, 403) or exc.status is None:
                    raise
                if exc.status == 404:
                    results[position] = ApplyResult(optout, ALREADY, f"Mailgun holds no unsubscribe with tag {tag!r}")
                else:
                    results[position] = ApplyResult(optout, PERMANENT, str(exc))
            except RetryBudgetSpent as exc:
                for rest in range(position, len(batch)):
                    results[rest] = results[rest] or ApplyResult(batch[rest], TRANSIENT, str(exc))
                break
            except TransientError as exc:
                results[position] = ApplyResult(optout, TRANSIENT, str(exc))
            else:
                results[position] = ApplyResult(optout, APPLIED)
        return self._finished(batch, results)

    def _finished(self, batch: list[OptOut], results: list[ApplyResult | None]) -> list[ApplyResult]:
        done = [r for r in results if r is not None]
        if len(done) != len(batch):
            raise UnexpectedAnswer(self.name, "apply", "some items got no outcome", status=None)
        if done and all(r.outcome == TRANSIENT for r in done):
            # Nothing got through within this cycle's retry budget: the engine parks the whole batch.
            raise TransientError(f"{self.name}: no item of the batch could be sent: {done[0].message}")
        return done

    # -- operator checks --------------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Look the domain up, probe the three lists and list the tags unsubscribes use; changes nothing."""
        self.http.new_cycle()
        domain = self.settings.domain
        endpoint = "GET /v4/domains/{name}"
        answer = self._parse(self.http.request("GET", f"/v4/domains/{self._domain_path}", endpoint=endpoint),
                             DomainAnswer, endpoint)
        lines = [f"domain {domain}: {answer.domain.get('state') or 'state not reported'}"]
        counts: dict[str, int] = {}
        spelled: dict[str, str] = {}
        params: dict[str, str] | None = None
        scanned = 0
        for _ in range(self.settings.check_pages):
            items, next_params = self._list_page("unsubscribes", params)
            if not items:
                break
            scanned += len(items)
            for item in items:
                tags = [item.tags] if isinstance(item.tags, str) else list(item.tags or [])
                for tag in {t.strip() for t in tags if t and t.strip() and t.strip() != ALL_TAGS}:
                    counts[tag.lower()] = counts.get(tag.lower(), 0) + 1
                    spelled.setdefault(tag.lower(), tag)
            params = next_params
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

    def probe_refusal(self, exc: BaseException) -> str | None:
        """Why a check() probe was refused: the API key, the domain it may not use, or a domain not in the account."""
        if getattr(exc, "status", None) == 404 and "/domains/" in str(getattr(exc, "endpoint", "")):
            return (f"domain {self.settings.domain} is not in this Mailgun account (check `domain`, and `base_url` "
                    "for an EU domain)")
        return explain_refusal(exc, "api_key", f"access to domain {self.settings.domain}")

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    # -- small helpers ----------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.time(), timezone.utc)

    def _parse(self, response: httpx.Response, model: type, endpoint: str):
        try:
            return self.http.parse(response, model, endpoint)
        except VendorPermanentError as exc:
            raise UnexpectedAnswer(self.name, endpoint, exc.vendor_message, status=exc.status) from None
