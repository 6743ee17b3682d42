"""The HTTP adapter kit: what every vendor adapter does the same way, written once.

A vendor module keeps only what is its own (settings model, endpoints and answer
models, the mapping between its records and `OptOut`, its error-body reader) and
builds on `HttpAdapter` for the rest:

- `start()`: the shared client policy (adapters/http.py) with the vendor's headers,
  error reader and secrets; `require_topics()`, `distinct_ids()` for topic maps;
  `WindowSettings` for the settings of a read by time window;
- `parse()` / `get()` / `post()`: an answer read into a pydantic model, or one `UnexpectedAnswer`;
- `Outcomes`: one outcome per item of a batch, parking the rest when the cycle's retry
  budget is spent, and failing the batch when nothing got through;
- `each()`: one call per item; `send_batches()`: batch calls in chunks, halved on a 400
  that names a limit, one call per item when a batch is refused; `send_halving()`: calls
  split in halves until a refused item stands alone;
- `follow()`: the paging loop with a cursor (a token, an offset, a query), refusing a
  cursor that comes back; `window_start()`, `load_cursor()` / `saved_text()` for cursors;
- `filled_pages()`, `address_or_reject()`, `whole()`: pages of opt-outs and listed problems,
  and the reconcile read's opt-outs;
- `check()`: the skeleton of the operator check (a fresh retry budget, the vendor's
  `probe()`, `refuse_if()` naming every problem), `topic_lines()` for its topic map and
  `probe_refusal()` saying which credential or permission a refused probe lacked.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Container, Hashable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import field_validator

from state.addresses import InvalidAddress, normalise_address
from state.errors import ConfigError, TransientError
from state.models import ALREADY, GLOBAL_SCOPE, PERMANENT, TRANSIENT, ApplyResult, OptOut, Page, Rejected

from .base import Capabilities, Duration
from .http import (Clock, HttpAdapterSettings, HttpClient, RetryBudgetSpent, VendorError, VendorPermanentError,
                   explain_refusal, parse_retry_after)

Model = TypeVar("Model")
Cursor = TypeVar("Cursor")
Item = TypeVar("Item")
Moment = TypeVar("Moment")
# How vendors say a batch was over their limit (in a 400's message): the batch is halved and sent again.
LIMIT_WORDS = re.compile(r"\b(limit|maximum|max|too many|exceed\w*)\b", re.IGNORECASE)


class UnexpectedAnswer(VendorPermanentError):
    """A 2xx answer an adapter cannot read: an adapter-level failure, never an item's."""


def require_topics(settings: HttpAdapterSettings, topics: Mapping[str, str]) -> None:
    """Refuse an adapter whose `topics` name a topic that is not defined under [topics]."""
    undefined = sorted(set(settings.topics) - set(topics))
    if undefined:
        raise ValueError(f"topics {', '.join(undefined)} are not defined under [topics]")


class WindowSettings(HttpAdapterSettings):
    """The settings of an adapter that reads by time window, from `overlap` before where the last read ended."""

    overlap: Duration = 600.0
    # None: the first read takes the whole history (it goes through max_new_per_cycle like any read).
    initial_lookback: Duration | None = None


def topic_capabilities(settings: Any, scopes: Iterable[str] | None = None) -> Capabilities:
    """Read, write and lift, in batches of `batch_size`, for all email and each of `scopes` (the topics mapped)."""
    return Capabilities(read_changes=True, read_all=True, write=True, remove=True, batch_size=settings.batch_size,
                        scopes=frozenset(settings.topics if scopes is None else scopes))


def distinct_ids(topics: Mapping[str, Any], valid: Callable[[str], bool], expected: str, noun: str, *,
                 fold: Callable[[str], str] = str, note: str = "") -> dict[str, str]:
    """A topic map whose vendor ids are stripped, each `valid` and each used by one topic only (compared after
    `fold`); else a ValueError saying `expected` (for a bad id) or naming the `noun` two topics share."""
    seen: dict[str, str] = {}
    for topic, vendor_id in topics.items():
        vendor_id = str(vendor_id).strip()
        if not valid(vendor_id):
            raise ValueError(f"topic {topic!r}: expected {expected}, got {vendor_id!r}")
        if fold(vendor_id) in seen:
            raise ValueError(f"topics {seen[fold(vendor_id)]!r} and {topic!r} map to the same {noun} {vendor_id!r}"
                             f"{note}")
        seen[fold(vendor_id)] = topic
    return {topic: str(vendor_id).strip() for topic, vendor_id in topics.items()}


def integer_ids(topics: Mapping[str, Any], what: str) -> dict[str, str]:
    """A topic map whose vendor ids must be integers (given as text or numbers), stripped; else a ValueError."""
    for topic, vendor_id in topics.items():
        if not str(vendor_id).strip().isdigit():
            raise ValueError(f"topic {topic!r}: {what} are integers, got {vendor_id!r}")
    return {topic: str(vendor_id).strip() for topic, vendor_id in topics.items()}


def integer_topic_ids(what: str) -> Any:
    """The `topics` validator of a settings model whose vendor ids are integers (`integer_ids`)."""
    return field_validator("topics")(classmethod(lambda cls, topics: integer_ids(topics, what)))


def basic_auth(user: str, password: str) -> dict[str, Any]:
    """`start()`'s headers and secrets for HTTP Basic auth: the password, and its encoding, are secrets."""
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"headers": {"Authorization": f"Basic {basic}"}, "secrets": [password, basic]}


def json_body(response: httpx.Response) -> dict[str, Any]:
    """An error answer's JSON object, or {} when it is not one (an HTML page, plain text, a list)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def vendor_error(response: httpx.Response, now: float, message: str | None, category: str | None = None,
                 correlation_id: str | None = None, **more: Any) -> VendorError:
    """A `VendorError` with the vendor's message (else the reason phrase) and any Retry-After."""
    return VendorError(message or response.reason_phrase or "no message", category, correlation_id,
                       parse_retry_after(response.headers.get("retry-after"), now), **more)


CURSOR_VERSION = 1


def parse_time(text: str | None) -> datetime | None:
    """An aware datetime from ISO 8601 text (`Z` allowed; naive taken as UTC); None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def cursor_text(**fields: Any) -> str:
    """A saved cursor as compact JSON with its version, keys sorted."""
    return json.dumps({"v": CURSOR_VERSION, **fields}, sort_keys=True, separators=(",", ":"))


def last_page_carries(pages: Iterable[Page], cursor: Callable[[], str]) -> Iterator[Page]:
    """The non-empty pages, the last one (an empty one if none) carrying `cursor()`, asked for at the end."""
    held: Page | None = None
    for page in pages:
        if not (page.optouts or page.rejected):
            continue
        if held is not None:
            yield held
        held = page
    held = held or Page()
    held.cursor = cursor()
    yield held


def newest_on_last_page(pairs: Iterable[tuple[Page, Any]], newest: Any,
                        cursor_of: Callable[[Any], str]) -> Iterator[Page]:
    """`last_page_carries` for (page, newest time in it) pairs: the cursor is `cursor_of(newest seen)`."""
    seen = [newest]

    def pages() -> Iterator[Page]:
        for page, page_newest in pairs:
            if page_newest is not None and (seen[0] is None or page_newest > seen[0]):
                seen[0] = page_newest
            yield page

    return last_page_carries(pages(), lambda: cursor_of(seen[0]))


def address_or_reject(raw: str, page: Page, where: str, listed: bool) -> str | None:
    """`raw` normalised; None when it is no address, listed on `page` as rejected when `listed` (new)."""
    try:
        return normalise_address(raw)
    except InvalidAddress as exc:
        if listed:
            page.rejected.append(Rejected(where, raw, f"invalid address {raw!r}: {exc}"))
        return None


def filled_pages(batches: Iterable[Iterable[Item]], convert: Callable[[Item, Page], Any]) -> Iterator[Page]:
    """One page per batch of items, each item converted onto it; a page left empty is skipped."""
    for items in batches:
        page = Page()
        for item in items:
            convert(item, page)
        if page.optouts or page.rejected:
            yield page


def already_when_absent(message: str | Callable[[OptOut], str]) -> Callable[[OptOut, VendorPermanentError],
                                                                            ApplyResult]:
    """For `each` on a lift: a 404 means the vendor did not hold it (ALREADY, saying `message`); other
    refusals are PERMANENT."""
    def refused(optout: OptOut, exc: VendorPermanentError) -> ApplyResult:
        if exc.status == 404:
            return ApplyResult(optout, ALREADY, message if isinstance(message, str) else message(optout))
        return ApplyResult(optout, PERMANENT, str(exc))
    return refused


def adapter_failure(exc: VendorPermanentError) -> bool:
    """True when a refusal is about the adapter (credentials, access, no status, an unreadable answer), not an item."""
    return isinstance(exc, UnexpectedAnswer) or exc.status in (401, 403) or exc.status is None


class Outcomes:
    """One outcome slot per item of a batch, filled in any order; `finished()` hands them back in order."""

    def __init__(self, adapter: str, batch: Sequence[OptOut]):
        self.adapter = adapter
        self.batch = list(batch)
        self.results: list[ApplyResult | None] = [None] * len(self.batch)

    def set(self, index: int, outcome: str, message: str = "", **more: Any) -> None:
        self.results[index] = ApplyResult(self.batch[index], outcome, message, **more)

    def refuse(self, index: int, message: str) -> None:
        """The item cannot be written here for good (no mapping, a reason the vendor cannot hold)."""
        self.set(index, PERMANENT, message)

    def park(self, indexes: Iterable[int], reason: BaseException | str) -> None:
        """Items without an outcome yet wait for the next cycle."""
        for index in indexes:
            if self.results[index] is None:
                self.set(index, TRANSIENT, str(reason))

    def pending(self, indexes: Iterable[int]) -> list[int]:
        """The indexes that have no outcome yet."""
        return [i for i in indexes if self.results[i] is None]

    def finished(self, *, fail_when_nothing_sent: bool = True) -> list[ApplyResult]:
        """The results in batch order; the batch fails (transient) when not one item got through."""
        done = [r for r in self.results if r is not None]
        if len(done) != len(self.batch):
            raise UnexpectedAnswer(self.adapter, "apply", "some items got no outcome", status=None)
        if fail_when_nothing_sent and done and all(r.outcome == TRANSIENT for r in done):
            # Nothing got through within this cycle's retry budget: the engine parks the whole batch.
            raise TransientError(f"{self.adapter}: no item of the batch could be sent: {done[0].message}")
        return done


class HttpAdapter:
    """The shared part of every HTTP vendor adapter; a vendor class sets `settings_model` and its own parts.

    Hooks a vendor may override: `shown` (settings named in repr), `credential` (the secret's
    settings key, named when a probe is refused), `limit_words` (how its 400s name a batch limit),
    `on_adapter_failure`, `probe_needs`, and for `send_batches`
    `batch_allowed`, `batch_refused`, `batch_worked` and `batch_refusal_is_items`.
    """

    settings_model: ClassVar[type[HttpAdapterSettings]]
    shown: ClassVar[tuple[str, ...]] = ("base_url",)
    credential: ClassVar[str] = "api_key"
    limit_words: ClassVar[re.Pattern[str]] = LIMIT_WORDS
    capabilities: Capabilities

    def start(self, settings: HttpAdapterSettings, *, transport: httpx.BaseTransport | None,
              clock: Clock | None, **client: Any) -> None:
        """Keep the settings and open the shared HTTP client (`client`: headers, describe_error, secrets, ...)."""
        self.settings = settings
        self.name = settings.name
        self.http = HttpClient(settings.name, settings, transport=transport, clock=clock, **client)
        self.clock = self.http.clock
        self._chunk_size = int(getattr(settings, "batch_size", 1000))

    def __repr__(self) -> str:
        shown = "".join(f", {key}={getattr(self.settings, key)!r}" for key in self.shown)
        return f"{type(self).__name__}(name={self.name!r}{shown})"

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    def now(self) -> datetime:
        """The clock's time, in UTC."""
        return datetime.fromtimestamp(self.clock.time(), timezone.utc)

    # -- answers ---------------------------------------------------------------------------------------

    def parse(self, response: httpx.Response, model: type[Model], endpoint: str) -> Model:
        """The answer as `model`, or an UnexpectedAnswer naming adapter and endpoint."""
        try:
            return self.http.parse(response, model, endpoint)  # type: ignore[type-var]
        except VendorPermanentError as exc:
            raise UnexpectedAnswer(self.name, endpoint, exc.vendor_message, status=exc.status) from None

    def call(self, method: str, path: str, model: type[Model], endpoint: str | None = None, **request: Any) -> Model:
        """Call `path` and read the answer as `model`."""
        endpoint = endpoint or f"{method} {path}"
        return self.parse(self.http.request(method, path, endpoint=endpoint, **request), model, endpoint)

    def get(self, path: str, model: type[Model], endpoint: str | None = None, **request: Any) -> Model:
        """GET `path` and read the answer as `model`."""
        return self.call("GET", path, model, endpoint, **request)

    def post(self, path: str, model: type[Model], endpoint: str | None = None, **request: Any) -> Model:
        """POST to `path` and read the answer as `model`."""
        return self.call("POST", path, model, endpoint, **request)

    def bad_cursor(self, explanation: str) -> VendorPermanentError:
        """The error for a saved cursor this adapter cannot use."""
        return VendorPermanentError(self.name, "read cursor", explanation)

    def load_cursor(self, cursor: str | None, check: Callable[[dict], Any] = dict, *,
                    reset: str = "read from the start") -> Any:
        """A cursor saved by `cursor_text`, passed through `check` (which raises on bad fields); None for none."""
        if cursor is None:
            return None
        try:
            saved = json.loads(cursor)
            if not isinstance(saved, dict) or saved.get("v") != CURSOR_VERSION:
                raise ValueError("unknown cursor version")
            return check(saved)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise self.bad_cursor(f"the saved cursor is not one this adapter wrote ({exc}); reset it to "
                                  f"{reset}") from None

    def saved_text(self, cursor: str | None, read: Callable[[str], Any], what: str) -> Any:
        """A cursor saved as plain text (a time), as `read` gives it; None for none; a bad_cursor saying it is
        not `what` when `read` fails or gives None."""
        if cursor is None:
            return None
        try:
            value = read(cursor)
        except ValueError:
            value = None
        if value is None:
            raise self.bad_cursor(f"the saved cursor {cursor!r} is not {what}")
        return value

    def window_start(self, previous: Moment | None, now: Moment, minus: Callable[[Moment, float], Moment] = (
            lambda moment, seconds: moment - timedelta(seconds=seconds))) -> Moment | None:
        """Where a read by time window (WindowSettings) starts: `overlap` before the previous window's end; on
        a first read `initial_lookback` before now, or None (the whole history)."""
        if previous is not None:
            return minus(previous, self.settings.overlap)
        lookback = self.settings.initial_lookback
        return None if lookback is None else minus(now, lookback)

    # -- paging ----------------------------------------------------------------------------------------

    def offset_pages(self, fetch: Callable[[int], tuple[list, bool]], endpoint: str) -> Iterator[list]:
        """`follow` for paging by offset: `fetch(offset)` gives a page's items and whether more may follow
        (an empty page ends the list too); empty pages are left out."""
        def step(offset: int | None) -> tuple[list, int | None]:
            items, more = fetch(offset or 0)
            return items, (offset or 0) + len(items) if items and more else None

        return (items for items in self.follow(step, endpoint) if items)

    def whole(self, pages: Iterable[Page]) -> Iterator[Page]:
        """For `read_all`: a fresh retry budget, then the pages' opt-outs (problems are read_changes' to list)."""
        self.http.new_cycle()
        for page in pages:
            if page.optouts:
                yield Page(page.optouts)

    def follow(self, fetch: Callable[[Cursor | None], tuple[list, Cursor | None]], endpoint: str,
               first: Cursor | None = None) -> Iterator[list]:
        """Each page of `fetch(cursor) -> (items, next cursor or None)`, until there is no next cursor.

        A cursor that comes back would loop, and a page that repeats the one before means the
        vendor ignored the cursor (for offsets, counting it again would skip a page): both are
        an UnexpectedAnswer.
        """
        cursor, seen, previous = first, set(), None
        while True:
            items, following = fetch(cursor)
            if items and items == previous:
                raise UnexpectedAnswer(self.name, endpoint, f"the page at {str(cursor)[:80]!r} repeats the previous "
                                       "page", status=200)
            yield items
            if following is None:
                return
            key = following if isinstance(following, Hashable) else json.dumps(following, sort_keys=True)
            if key in seen or following == cursor:
                raise UnexpectedAnswer(self.name, endpoint, f"the paging cursor {str(following)[:80]!r} repeats an "
                                       "earlier one", status=200)
            seen.add(key)
            cursor, previous = following, items

    # -- writing ---------------------------------------------------------------------------------------

    def batch_outcomes(self, batch: Sequence[OptOut]) -> Outcomes:
        """A fresh retry budget for a write, and an outcome slot per item."""
        self.http.new_cycle()
        return Outcomes(self.name, batch)

    def unmapped(self, scope: str, noun: str) -> str:
        """Why an item of a topic with no vendor id here cannot be written."""
        return f"topic {scope!r} has no {noun} at {self.name}"

    def by_target(self, outcomes: Outcomes, ids: Mapping[str, str], noun: str) -> tuple[list[int],
                                                                                        dict[str, list[int]]]:
        """The items for all email, and the others grouped by their topic's vendor id (`ids`: topic -> id);
        an item of a topic `ids` lacks is refused."""
        everywhere: list[int] = []
        by_id: dict[str, list[int]] = {}
        for index, optout in enumerate(outcomes.batch):
            if optout.scope == GLOBAL_SCOPE:
                everywhere.append(index)
            elif optout.scope in ids:
                by_id.setdefault(ids[optout.scope], []).append(index)
            else:
                outcomes.refuse(index, self.unmapped(optout.scope, noun))
        return everywhere, by_id

    def on_adapter_failure(self, exc: VendorPermanentError) -> None:
        """Called before an adapter-level refusal is raised out of `each` (HubSpot forgets its batch answers)."""

    def each(self, outcomes: Outcomes, indexes: Iterable[int], call: Callable[[OptOut], ApplyResult | None],
             refused: Callable[[OptOut, VendorPermanentError], ApplyResult] | None = None) -> bool:
        """One call per item; a None result leaves the item for the caller. False when the rest was parked.

        `refused` gives an item's outcome when the vendor refused its call for good (default
        PERMANENT; a vendor may read a 404 as ALREADY).
        """
        indexes = list(indexes)
        for position, index in enumerate(indexes):
            optout = outcomes.batch[index]
            try:
                result = call(optout)
            except VendorPermanentError as exc:
                if adapter_failure(exc):
                    self.on_adapter_failure(exc)
                    raise  # credentials, access or an unreadable answer: the adapter, not this address
                outcomes.results[index] = (refused(optout, exc) if refused
                                           else ApplyResult(optout, PERMANENT, str(exc)))
            except RetryBudgetSpent as exc:
                outcomes.park(indexes[position:], exc)
                return False
            except TransientError as exc:
                outcomes.set(index, TRANSIENT, str(exc))
            else:
                if result is not None:
                    outcomes.results[index] = result
        return True

    def one_call_each(self, batch: Sequence[OptOut], call: Callable[[OptOut], ApplyResult | None],
                      refused: Callable[[OptOut, VendorPermanentError], ApplyResult] | None = None
                      ) -> list[ApplyResult]:
        """`each` over a whole batch, with a fresh retry budget; the results in order."""
        outcomes = self.batch_outcomes(batch)
        self.each(outcomes, range(len(batch)), call, refused)
        return outcomes.finished()

    def batch_allowed(self) -> bool:
        """False to send one call per item instead of batches (HubSpot without its batch scopes)."""
        return True

    def batch_refused(self, exc: VendorPermanentError) -> bool:
        """True when a refused batch call means "send singly from now on" (and the refusal was noted)."""
        return False

    def batch_worked(self) -> None:
        """A batch call got through."""

    def batch_refusal_is_items(self, exc: VendorPermanentError, items: list[OptOut]) -> set[int] | bool:
        """What a refused batch means: True (find the refused items one call each), False (an adapter failure,
        raised), or the positions it names, refused alone while the rest is sent again."""
        return True

    def send_batches(self, outcomes: Outcomes, indexes: Iterable[int],
                     batch_call: Callable[[list[OptOut]], list[ApplyResult | None]],
                     single_call: Callable[[OptOut], ApplyResult]) -> None:
        """Send in chunks of the batch size; halve on a 400 naming a limit; find refused items one by one.

        A None in `batch_call`'s answer is an item the vendor's answer did not mention: asked about
        singly. A transient failure parks everything not yet sent.
        """
        pending = list(indexes)
        while pending:
            if not self.batch_allowed():
                self.each(outcomes, pending, single_call)
                return
            chunk = pending[:self._chunk_size]
            items = [outcomes.batch[i] for i in chunk]
            try:
                answers = batch_call(items)
            except UnexpectedAnswer:
                raise
            except VendorPermanentError as exc:
                if self.batch_refused(exc):
                    continue
                if exc.status in (401, 403) or exc.status is None:
                    raise
                if exc.status == 400 and self.limit_words.search(exc.vendor_message) and self._chunk_size > 1:
                    self._chunk_size = max(1, self._chunk_size // 2)
                    continue
                meaning = self.batch_refusal_is_items(exc, items)
                if meaning is False:
                    raise
                if isinstance(meaning, set) and meaning and len(meaning) < len(chunk):
                    for position in meaning:
                        outcomes.set(chunk[position], PERMANENT, str(exc))
                    pending = [i for p, i in enumerate(chunk) if p not in meaning] + pending[len(chunk):]
                    continue
                self.each(outcomes, chunk, single_call)
                pending = pending[len(chunk):]
                continue
            except TransientError as exc:
                outcomes.park(pending, exc)
                return
            self.batch_worked()
            unreported = []
            for index, answer in zip(chunk, answers):
                if answer is None:
                    unreported.append(index)
                else:
                    outcomes.results[index] = answer
            if unreported:
                self.each(outcomes, unreported, single_call)
            pending = pending[len(chunk):]

    def send_halving(self, groups: Sequence[Item], size: int, send: Callable[[list[Item]], Any],
                     refuse: Callable[[list[Item], VendorPermanentError], Any],
                     park: Callable[[Sequence[Item], BaseException | str], Any], rest: str, *,
                     fatal: Container[int] = (), alone: Container[int] = ()) -> bool:
        """Send `groups` (items, or an address with its items) in calls of at most `size`, for a vendor whose
        answer does not name what it refused: a refused call is split in halves until the refused group stands
        alone and is `refuse`d. A refusal with a status in `alone` refuses the call's groups unsplit; one in
        `fatal` is raised, like an adapter failure. A transient failure parks that call's groups and, saying
        `rest`, every group not sent yet: False then (the rest waits for the next cycle)."""
        def halves(part: list[Item]) -> bool:
            try:
                send(part)
            except VendorPermanentError as exc:
                if adapter_failure(exc) or exc.status in fatal:
                    raise  # credentials, access or the account's setup: the adapter, not these items
                if len(part) < 2 or exc.status in alone:
                    refuse(part, exc)
                    return True
                middle = len(part) // 2
                if not halves(part[:middle]):
                    park(part[middle:], rest)
                    return False
                return halves(part[middle:])
            except TransientError as exc:
                park(part, exc)
                return False
            return True

        for start in range(0, len(groups), size):
            if not halves(list(groups[start:start + size])):
                park(groups[start + size:], rest)
                return False
        return True

    # -- the operator check ----------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Verify the adapter can work, with read-only calls; changes nothing. Lines describing what was found."""
        self.http.new_cycle()
        return self.probe()

    def probe(self) -> list[str]:
        """The vendor's read-only probes, in order; `refuse_if(problems)` stops at unusable settings."""
        raise NotImplementedError

    def refuse_if(self, problems: list[str]) -> None:
        """A ConfigError naming every problem a probe found, if any."""
        if problems:
            raise ConfigError(f"{self.name}: " + "; ".join(problems))

    def topic_lines(self, known: Mapping[str, str], noun: str, problems: list[str], *, missing: str,
                    unmapped: str) -> list[str]:
        """`topic -> <noun> id (name)` per mapped topic, a problem for an id the vendor lacks, and an
        `UNMAPPED:` line for each vendor id no topic maps to. `known` is vendor id -> name."""
        lines = []
        for topic, vendor_id in sorted(self.settings.topics.items()):
            if vendor_id in known:
                lines.append(f"topic {topic} -> {noun} {vendor_id} ({known[vendor_id]})")
            else:
                problems.append(f"topic {topic} maps to {noun} {vendor_id}, {missing}")
        mapped = set(self.settings.topics.values())
        lines += [f"UNMAPPED: {noun} {vendor_id} ({name}); {unmapped}" for vendor_id, name in known.items()
                  if vendor_id not in mapped]
        return lines

    def probe_refusal(self, exc: BaseException) -> str | None:
        """Why a check() probe was refused: what `probe_missing` names for a 404, else the credential, or (with
        `probe_needs`) what it lacks."""
        missing = self.probe_missing(str(getattr(exc, "endpoint", ""))) if getattr(exc, "status", None) == 404 else None
        return missing or explain_refusal(exc, self.credential, self.probe_needs(exc))

    def probe_missing(self, endpoint: str) -> str | None:
        """What a probe answered 404 at `endpoint` did not find (an audience, a domain); None when unknown."""
        return None

    def probe_needs(self, exc: BaseException) -> str | None:
        """The permission a refused probe lacked (a vendor names its scopes); None when unknown."""
        return None
