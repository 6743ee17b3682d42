"""`postmark`: two-way opt-out sync with a Postmark server's per-stream suppression lists.

One message stream stands for all email (scope `*`, default `outbound`); other streams are
topics through `topics = {topic: stream id}`. Reads the suppression dump, writes suppressions.

What this relies on from Postmark's API reference ([DOC]) and its official client
libraries ([LIB]):
- [DOC] Base URL https://api.postmarkapp.com; server-level calls send the server token in
  `X-Postmark-Server-Token`; a wrong or missing token answers 401; other refusals answer
  422 with `{"ErrorCode": n, "Message": ...}` (ErrorCode 10 = bad or missing token, 429 =
  rate limit exceeded); a missing entity (such as a stream) answers 404.
- [DOC] `GET /message-streams/{stream}/suppressions/dump` with optional `SuppressionReason`
  (HardBounce, SpamComplaint, ManualSuppression), `Origin` (Recipient, Customer, Admin),
  `fromdate` / `todate` (dates, inclusive) and `EmailAddress`; it answers `{Suppressions:
  [{EmailAddress, SuppressionReason, Origin, CreatedAt}]}` with no paging, so one answer is
  split into pages here. `CreatedAt` carries an offset (e.g. -05:00); the date filters do
  not say which zone they use, hence `overlap_days`.
- [DOC] `POST /message-streams/{stream}/suppressions` with `{Suppressions: [{EmailAddress}]}`
  answers `{Suppressions: [{EmailAddress, Status, Message}]}` (Status Suppressed or Failed);
  [LIB] they are created with origin Customer and reason ManualSuppression, processed
  asynchronously (up to a minute), at most 50 addresses per call (also for deletes).
- [DOC] `POST .../suppressions/delete` with the same body; deleting a HardBounce suppression
  reactivates the bounce; [LIB] Status Deleted or Failed; SpamComplaint suppressions cannot be
  deleted. [DOC] `GET /message-streams` lists the server's streams (ID, Name, MessageStreamType).

Mapping: HardBounce -> hard_bounce and SpamComplaint -> spam_complaint, both scope `*` and
origin system, whatever the stream (a bounce belongs to the address, and a complaint
anywhere suppresses everywhere). ManualSuppression keeps the stream's scope: origin
Recipient -> unsubscribed by the recipient (the unsubscribe link); Customer -> manual by a
user (the account's own people or API, this daemon included); Admin -> manual by a user
(Postmark's staff acting for the account: neither the recipient nor an automatic report).

Writes: a topic opt-out suppresses the topic's stream; an all-email opt-out suppresses every
stream this adapter knows, since a suppression covers one stream only. Each write reports that it
reads back as `manual` (held_as) and, for an all-email one, in which topic streams (fanned_out):
the store takes those read-backs as the write's echo, not as topic opt-outs of their own. Postmark's answer
does not say whether an address was suppressed already: Suppressed is APPLIED. A lift
deletes only origin-Customer manual suppressions (the only kind this daemon creates); the
others were made by the recipient, by a bounce or complaint, or by Postmark's staff, and are
refused with the reason. Soft bounces never reach the suppression list.

Re-subscribes (issue 17): the polling API cannot say who made one, so none is read. Confirmed [LIB
postmark-php, postmark-dotnet "Managing Suppressions", found with the search tool]: the suppressions
dump lists only current suppressions, with the `Origin` (Recipient, Customer, Admin) of the
suppression, not of its removal; deleting one ("reactivate") leaves nothing to read. The
SubscriptionChange webhook does say it: `SuppressSending: false` is a reactivation, with `Origin`
Recipient, Customer or Admin and `ChangedAt` [DOC, ../shared/specs/webhooks.md]; webhooks are not read
here. So a re-subscribe at Postmark is drift: a reconcile re-applies the opt-out, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Literal

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from state.errors import TransientError
from state.models import ALREADY, APPLIED, GLOBAL_SCOPE, PERMANENT, TRANSIENT, ApplyResult, OptOut, Page, Rejected, \
    to_utc_iso

from .http import Clock, HttpAdapterSettings, VendorAnswer, VendorError, generic_pause_hint
from .kit import (HttpAdapter, Outcomes, address_or_reject, cursor_text, distinct_ids, json_body, newest_on_last_page,
                  parse_time, require_topics, topic_capabilities, vendor_error)
from .kit import UnexpectedAnswer  # noqa: F401  (re-exported: callers catch it from the vendor module)

MAX_SUPPRESSIONS = 50  # [LIB] addresses per create or delete call
_STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
NOT_SENT = "not sent: an earlier call of this batch could not be sent in this cycle"

# Why a lift may not remove a suppression that this daemon did not create at Postmark.
NOT_OURS = {
    "SpamComplaint": "Postmark does not let a spam complaint be reactivated through the API, and a complaint "
                     "is never lifted by this daemon",
    "HardBounce": "it is Postmark's record of a hard bounce, not a suppression this daemon created",
    "Recipient": "the recipient made it (Postmark's unsubscribe link); only the recipient can undo it",
    "Admin": "Postmark's staff made it; only Postmark support can change it",
}


class PostmarkSettings(HttpAdapterSettings):
    """Settings of a `postmark` adapter instance (one per Postmark server).

    `topics` maps a topic key to a message stream id; `all_email_stream` is the stream
    whose suppressions mean all email (scope `*`), None when no stream does.
    """

    type: Literal["postmark"] = "postmark"
    base_url: str = "https://api.postmarkapp.com"
    server_token: SecretStr = Field(
        description="The Postmark server API token of the server whose streams this adapter keeps.")
    all_email_stream: str | None = "outbound"
    batch_size: int = Field(default=MAX_SUPPRESSIONS, ge=1, le=MAX_SUPPRESSIONS)
    # The dump has no paging: its answer is handed to the store in pages of this size.
    page_size: int = Field(default=1000, ge=1, le=100_000)
    # Days re-read before the last suppression seen (zone of the date filters, late processing).
    overlap_days: int = Field(default=1, ge=1, le=30)
    # First read: how many days back (None: the whole list).
    initial_lookback_days: int | None = Field(default=None, ge=1)
    # The webhook's basic-auth credentials: its webhooks are received at /hooks/<name> when set.
    webhook_secret: SecretStr | None = None
    webhook_username: str = Field(default="optout-sync", min_length=1, max_length=256)

    @field_validator("all_email_stream")
    @classmethod
    def _all_email_stream(cls, value: str | None) -> str | None:
        if value is not None and not _STREAM_ID.match(value.strip()):
            raise ValueError(f"expected a message stream id such as 'outbound', got {value!r}")
        return value.strip() if value is not None else None

    @field_validator("topics")
    @classmethod
    def _streams(cls, topics: dict[str, str]) -> dict[str, str]:
        return distinct_ids(topics, lambda stream: bool(_STREAM_ID.match(stream)),
                            "a message stream id such as 'broadcast'", "stream")

    @model_validator(mode="after")
    def _all_email_is_not_a_topic(self) -> "PostmarkSettings":
        if self.all_email_stream is not None and self.all_email_stream in self.topics.values():
            raise ValueError(f"stream {self.all_email_stream!r} is the all-email stream and cannot also be a topic")
        return self


# -- Postmark's answers, as far as this adapter relies on them ------------------------------------------


class Suppression(VendorAnswer):
    EmailAddress: str
    SuppressionReason: str
    Origin: str | None = None
    CreatedAt: str | None = None


class Dump(VendorAnswer):
    Suppressions: list[Suppression]


class SuppressionStatus(VendorAnswer):
    EmailAddress: str
    Status: str
    Message: str | None = None


class Statuses(VendorAnswer):
    Suppressions: list[SuppressionStatus]


class Stream(VendorAnswer):
    ID: str
    Name: str | None = None
    MessageStreamType: str | None = None
    ArchivedAt: str | None = None


class Streams(VendorAnswer):
    MessageStreams: list[Stream]


def postmark_error(response: httpx.Response, now: float) -> VendorError:
    """Postmark's `{"ErrorCode", "Message"}` body and any Retry-After."""
    body = json_body(response)
    code = body.get("ErrorCode")
    return vendor_error(response, now, str(body.get("Message") or "") or None,
                        f"ErrorCode {code}" if code is not None else None)


class PostmarkAdapter(HttpAdapter):
    """Reads and writes the suppressions of a Postmark server's mapped message streams."""

    settings_model = PostmarkSettings
    credential = "server_token"

    def __init__(self, settings: PostmarkSettings, topics: dict[str, str],
                 transport: httpx.BaseTransport | None = None, clock: Clock | None = None):
        require_topics(settings, topics)
        self._stream_of = dict(settings.topics)
        # Streams read, each with the scope its manual suppressions stand for.
        self._scope_of: dict[str, str] = {}
        if settings.all_email_stream is not None:
            self._scope_of[settings.all_email_stream] = GLOBAL_SCOPE
        self._scope_of.update({stream: topic for topic, stream in settings.topics.items()})
        self.capabilities = topic_capabilities(settings)
        token = settings.server_token.get_secret_value()
        self.start(settings, headers={"X-Postmark-Server-Token": token}, describe_error=postmark_error,
                   pause_hint=generic_pause_hint, transport=transport, clock=clock, secrets=[token])

    def __repr__(self) -> str:
        return (f"PostmarkAdapter(name={self.name!r}, base_url={self.settings.base_url!r}, "
                f"streams={sorted(self._scope_of)!r})")

    # -- reading --------------------------------------------------------------------------------------

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        """Suppressions of every mapped stream from `overlap_days` before the last one seen.

        The cursor is the newest CreatedAt seen; it is saved with the last page. What is
        read again in the overlap is harmless to the store; problems there are not listed twice.
        """
        self.http.new_cycle()
        newest = self.load_cursor(cursor, lambda saved: parse_time(saved["newest"]) if saved.get("newest") else None)
        params: dict[str, str] = {}
        if newest is not None:
            params["fromdate"] = (newest.date() - timedelta(days=self.settings.overlap_days)).isoformat()
        elif self.settings.initial_lookback_days is not None:
            params["fromdate"] = (self.now().date() - timedelta(days=self.settings.initial_lookback_days)).isoformat()
        pairs = (pair for stream in self._scope_of for pair in self._stream_pages(stream, params, listed_up_to=newest))
        yield from newest_on_last_page(pairs, newest, lambda seen: cursor_text(newest=seen.isoformat() if seen else None))

    def read_all(self) -> Iterator[Page]:
        """Every suppression of every mapped stream, handed over page by page (for reconcile)."""
        return self.whole(page for stream in self._scope_of
                          for page, _ in self._stream_pages(stream, {}, listed_up_to=None, list_problems=False))

    def _stream_pages(self, stream: str, params: dict[str, str], listed_up_to: datetime | None,
                      list_problems: bool = True) -> Iterator[tuple[Page, datetime | None]]:
        """One dump of a stream, cut into pages; each with the newest CreatedAt it holds."""
        suppressions = self._dump(stream, params)
        for start in range(0, max(len(suppressions), 1), self.settings.page_size):
            page, newest = Page(), None
            for item in suppressions[start:start + self.settings.page_size]:
                created = self._convert(stream, item, page, listed_up_to, list_problems)
                if created is not None and (newest is None or created > newest):
                    newest = created
            yield page, newest

    def _dump(self, stream: str, params: dict[str, str]) -> list[Suppression]:
        path = f"/message-streams/{stream}/suppressions/dump"
        endpoint = "GET /message-streams/{stream}/suppressions/dump"
        return self.get(path, Dump, endpoint, params=params).Suppressions

    def _convert(self, stream: str, item: Suppression, page: Page, listed_up_to: datetime | None,
                 list_problems: bool) -> datetime | None:
        """Turn one suppression into an opt-out (or a problem listed once); its CreatedAt."""
        created = parse_time(item.CreatedAt)
        new = list_problems and (listed_up_to is None or (created is not None and created > listed_up_to))
        where = f"suppressions of stream {stream}"
        address = address_or_reject(item.EmailAddress, page, where, new)
        if address is None:
            return created
        details = {"postmark_stream": stream, "postmark_reason": item.SuppressionReason,
                   "postmark_origin": item.Origin}
        occurred = to_utc_iso(created) if created else None
        if item.SuppressionReason == "HardBounce":
            page.optouts.append(OptOut(address, GLOBAL_SCOPE, "hard_bounce", "system", occurred, details))
        elif item.SuppressionReason == "SpamComplaint":
            page.optouts.append(OptOut(address, GLOBAL_SCOPE, "spam_complaint", "system", occurred, details))
        elif item.SuppressionReason == "ManualSuppression":
            reason, origin = ("unsubscribed", "recipient") if item.Origin == "Recipient" else ("manual", "user")
            if item.Origin not in ("Recipient", "Customer", "Admin"):
                # An origin this adapter does not know: the most binding reading, so nobody lifts it.
                reason, origin = "unsubscribed", "recipient"
            page.optouts.append(OptOut(address, self._scope_of[stream], reason, origin, occurred, details))
        elif new:
            page.rejected.append(Rejected(where, address, f"{address}: unknown Postmark SuppressionReason "
                                                          f"{item.SuppressionReason!r}; not applied"))
        return created

    # -- writing ----------------------------------------------------------------------------------------

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Suppress each opt-out in its stream(s), in calls of at most `batch_size`; one result per item."""
        return self._change(batch, delete=False)

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        """For an audited lift: delete the Customer-made manual suppressions of each opt-out's stream(s).

        Each address is looked up first; suppressions of another origin or reason are refused,
        saying why (see the module docstring).
        """
        return self._change(batch, delete=True)

    def _targets(self, optout: OptOut) -> list[str] | str:
        """The streams an opt-out goes to, or why it can go nowhere."""
        if optout.scope == GLOBAL_SCOPE:
            streams = list(self._scope_of)
            return streams or f"{self.name} has no stream for all email and no topic streams"
        stream = self._stream_of.get(optout.scope)
        return [stream] if stream else f"topic {optout.scope!r} has no Postmark stream at {self.name}"

    def _change(self, batch: list[OptOut], delete: bool) -> list[ApplyResult]:
        self.http.new_cycle()
        # Per item, the outcome in each of its streams.
        per_item: list[list[ApplyResult]] = [[] for _ in batch]
        by_stream: dict[str, dict[str, list[int]]] = {}
        refused: list[ApplyResult | None] = [None] * len(batch)
        for index, optout in enumerate(batch):
            targets = self._targets(optout)
            if isinstance(targets, str):
                refused[index] = ApplyResult(optout, PERMANENT, targets)
                continue
            for stream in targets:
                by_stream.setdefault(stream, {}).setdefault(optout.address, []).append(index)
        parked = False
        for stream, addresses in by_stream.items():
            if parked:
                _note(per_item, batch, addresses.items(), TRANSIENT, NOT_SENT)
                continue
            if delete:
                addresses = self._deletable(batch, stream, addresses, per_item)
            # A call refused whole (422 other than bad credentials) is split until the refused address
            # stands alone; a 404 (no such stream) refuses the call's addresses.
            parked = not self.send_halving(
                list(addresses.items()), self.settings.batch_size,
                lambda part, s=stream: self._send(batch, s, part, per_item, delete),
                lambda part, exc, s=stream: _note(per_item, batch, part, PERMANENT, f"stream {s}: {exc}"),
                lambda part, why: _note(per_item, batch, part, TRANSIENT, str(why)), NOT_SENT, alone=(404,))
        outcomes = Outcomes(self.name, batch)
        for index, optout in enumerate(batch):
            result = refused[index] or self._combine(optout, per_item[index])
            outcomes.results[index] = result if delete else self._as_held(result)
        return outcomes.finished()

    def _deletable(self, batch: list[OptOut], stream: str, addresses: dict[str, list[int]],
                   per_item: list[list[ApplyResult]]) -> dict[str, list[int]]:
        """The addresses whose suppression in `stream` this daemon may delete; the rest get their outcome."""
        kept: dict[str, list[int]] = {}
        for address, indexes in addresses.items():
            try:
                found = [s for s in self._dump(stream, {"EmailAddress": address})
                         if s.EmailAddress.strip().lower() == address]
            except TransientError as exc:
                _note(per_item, batch, [(address, indexes)], TRANSIENT, str(exc))
                continue
            if not found:
                _note(per_item, batch, [(address, indexes)], ALREADY, f"stream {stream}: Postmark holds no suppression")
                continue
            blocker = next((s for s in found if s.SuppressionReason != "ManualSuppression"
                            or s.Origin != "Customer"), None)
            if blocker is None:
                kept[address] = indexes
                continue
            why = NOT_OURS.get(blocker.SuppressionReason) or NOT_OURS.get(blocker.Origin or "") or (
                f"its origin is {blocker.Origin!r}, and only Customer-made suppressions are removed")
            _note(per_item, batch, [(address, indexes)], PERMANENT,
                  f"stream {stream}: not removed: {blocker.SuppressionReason} by {blocker.Origin}: {why}")
        return kept

    def _send(self, batch: list[OptOut], stream: str, addresses: list[tuple[str, list[int]]],
              per_item: list[list[ApplyResult]], delete: bool) -> None:
        """One create or delete call for (address, its items) pairs; each item's outcome from the answer."""
        endpoint = "POST /message-streams/{stream}/suppressions" + ("/delete" if delete else "")
        answer = self.post(f"/message-streams/{stream}/suppressions" + ("/delete" if delete else ""), Statuses,
                           endpoint, json={"Suppressions": [{"EmailAddress": a} for a, _ in addresses]})
        reported = {s.EmailAddress.strip().lower(): s for s in answer.Suppressions}
        success = "Deleted" if delete else "Suppressed"
        for address, indexes in addresses:
            status = reported.get(address)
            if status is None:
                _note(per_item, batch, [(address, indexes)], PERMANENT,
                      f"stream {stream}: Postmark's answer does not mention this address")
            else:
                _note(per_item, batch, [(address, indexes)], APPLIED if status.Status == success else PERMANENT,
                      f"stream {stream}: {status.Status}" if status.Status == success
                      else f"stream {stream}: {status.Status}: {status.Message or 'no message'}")

    def _as_held(self, result: ApplyResult) -> ApplyResult:
        """Say how Postmark will list a suppression we made, so that reading it back is known as our echo.

        It lists it as ManualSuppression by Customer (read as `manual`) in every stream it went to:
        an all-email opt-out reads back once per topic stream too (`fanned_out`).
        """
        if result.outcome != APPLIED:
            return result
        scope = result.optout.scope
        fanned = tuple(self._scope_of[s] for s in self._targets(result.optout)
                       if self._scope_of[s] not in (scope, GLOBAL_SCOPE)) if scope == GLOBAL_SCOPE else ()
        return ApplyResult(result.optout, result.outcome, result.message, held_as="manual", fanned_out=fanned)

    @staticmethod
    def _combine(optout: OptOut, outcomes: list[ApplyResult]) -> ApplyResult:
        """One result from an item's outcomes in each of its streams: the worst one decides."""
        for kind in (TRANSIENT, PERMANENT):
            bad = [o.message for o in outcomes if o.outcome == kind]
            if bad:
                return ApplyResult(optout, kind, "; ".join(bad))
        if outcomes and all(o.outcome == ALREADY for o in outcomes):
            return ApplyResult(optout, ALREADY, "; ".join(o.message for o in outcomes))
        return ApplyResult(optout, APPLIED, "; ".join(o.message for o in outcomes if o.message))

    # -- operator checks --------------------------------------------------------------------------------

    def probe(self) -> list[str]:
        """Verify the token by listing the server's streams; flag unmapped ones; changes nothing."""
        streams = self.get("/message-streams", Streams, params={"MessageStreamType": "All",
                                                                 "IncludeArchivedStreams": "false"}).MessageStreams
        known = {s.ID: s for s in streams}
        lines = [f"server token: valid ({len(streams)} message streams)"]
        problems = [f"stream {stream!r} ({'all email' if scope == GLOBAL_SCOPE else 'topic ' + scope}) does not "
                    "exist on this server" for stream, scope in self._scope_of.items() if stream not in known]
        self.refuse_if(problems)
        for stream, scope in self._scope_of.items():
            kind = known[stream].MessageStreamType or "unknown type"
            lines.append(f"stream {stream} ({kind}) -> " + ("all email (*)" if scope == GLOBAL_SCOPE else f"topic {scope}"))
        for stream in streams:
            if stream.ID not in self._scope_of and stream.MessageStreamType != "Inbound":
                lines.append(f"UNMAPPED: stream {stream.ID} ({stream.MessageStreamType or 'unknown type'}); its "
                             "suppressions are not read until a topic maps to it")
        return lines

    def probe_needs(self, exc: BaseException) -> str | None:
        """A refused probe lacked the server token's access (a stream that does not exist is named by check())."""
        return "access to the server's message streams"


def _note(per_item: list[list[ApplyResult]], batch: list[OptOut], addresses: Iterable[tuple[str, list[int]]],
          outcome: str, message: str) -> None:
    """The same outcome, in one stream, for the items of each address."""
    for _, indexes in addresses:
        for index in indexes:
            per_item[index].append(ApplyResult(batch[index], outcome, message))
