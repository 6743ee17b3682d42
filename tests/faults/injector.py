"""A fault layer for any vendor fake: wraps `handle(httpx.Request) -> httpx.Response` and, at a seeded random
rate that can be switched at run time, answers with a fault instead: rate limits, 5xx, slowness, resets,
broken or oddly shaped JSON, a repeating page cursor, a page with fewer items than it promised.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

import httpx

from tests.fakes.serve import DropConnection

RATE_LIMITS = ("429_seconds", "429_date")
SERVER_ERRORS = ("500", "502", "503")
NETWORK = ("slow", "reset")
BROKEN_BODIES = ("malformed_json", "truncated_json", "wrong_shape")
PAGING = ("repeat_cursor", "short_page")
ALL_KINDS = RATE_LIMITS + SERVER_ERRORS + NETWORK + BROKEN_BODIES + PAGING

# Bodies a vendor (or a proxy in front of it) has been seen to send with a JSON content type; none parses.
MALFORMED = (
    b'{"results": [{"email": "a@example.com",, }]',
    b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    b"\xff\xfe\x00g\x00a\x00r\x00b\x00a\x00g\x00e",
    b"{'single': 'quotes'}",
    b'{"hasMore": tru',
)
_DROP_HEADERS = {"content-length", "content-encoding", "transfer-encoding"}


Handle = Callable[[httpx.Request], httpx.Response]


def generic_rate_limited(retry_after: str, now: float) -> httpx.Response:
    """A 429 as most JSON APIs send it, for vendors whose fake has no body of its own."""
    return httpx.Response(429, json={"message": "Too many requests"}, headers={"Retry-After": retry_after})


def _not_a_page(request: httpx.Request, body: Any, handle: Handle) -> Any | None:
    return None


@dataclass
class VendorProfile:
    """What the injector needs to know to fake one vendor's faults faithfully.

    `rate_limited(retry_after, now)` builds the vendor's own 429 (body and rate-limit
    headers). `repeat_cursor(request, body, handle)` turns a real page answer into one
    whose cursor repeats: a token cursor names the page just read again, an offset
    page holds the previous page's items again. `short_page(request, body, handle)`
    holds fewer items than the page promised, with a cursor that goes on right after
    them. Both return None for an answer that is not a page (the injector then answers
    a plain 503). `first_page(request)` is the request for the first page of the same
    list, for a server that ignores the cursor altogether (None: not a page).
    """

    name: str
    rate_limited: Callable[[str, float], httpx.Response] = generic_rate_limited
    repeat_cursor: Callable[[httpx.Request, Any, Handle], Any | None] = _not_a_page
    short_page: Callable[[httpx.Request, Any, Handle], Any | None] = _not_a_page
    first_page: Callable[[httpx.Request], httpx.Request | None] = lambda request: None


class FaultInjector:
    """Wraps a fake's `handle`; `rate` (0..1) of the requests get a fault of a kind drawn from `kinds`.

    `served=True` is for a fake behind tests.fakes.serve: a slow answer really
    sleeps `slow_seconds` and a reset closes the socket. In-process (MockTransport)
    they raise the httpx exceptions the client would see instead. Faults that can
    happen after the vendor did the work (a timeout, a reset, a broken body, half
    of the 5xx) let the real fake handle the request first: the effect happens and
    the answer is lost, the hardest case for at-least-once delivery.
    """

    def __init__(self, handle: Callable[[httpx.Request], httpx.Response], profile: VendorProfile, *,
                 seed: int = 0, rate: float = 0.0, kinds: Iterable[str] = ALL_KINDS, served: bool = False,
                 clock: Callable[[], float] = time.time, slow_seconds: float = 3.0, max_retry_after: int = 5):
        self.inner = handle
        self.profile = profile
        self.rng = random.Random(seed)
        self.rate = rate
        self.kinds = tuple(kinds)
        self.served = served
        self.clock = clock
        self.slow_seconds = slow_seconds
        self.max_retry_after = max_retry_after
        self.seen = 0
        self.injected: Counter[str] = Counter()
        # (kind, status, Retry-After) of every fault answered, in order.
        self.answers: list[tuple[str, int | None, str | None]] = []
        self.forced: deque[str] = deque()
        self.scheduled: dict[int, str] = {}
        # A server that ignores the page cursor and always answers the first page (a stuck cursor).
        self.ignore_cursor = False
        # A paging fault drawn for an answer that is not a page becomes a 503 (False: the answer as is).
        self.refuse_non_pages = True
        # Pages to let through unharmed before a drawn paging fault takes effect, and a cap on faults.
        self.pages_to_skip = 0
        self.limit: int | None = None
        self._lock = threading.Lock()

    # -- switches -----------------------------------------------------------------------------

    def set(self, rate: float | None = None, kinds: Iterable[str] | None = None) -> None:
        """Change the fault rate and/or kinds from now on."""
        with self._lock:
            if rate is not None:
                self.rate = rate
            if kinds is not None:
                self.kinds = tuple(kinds)

    def force(self, *kinds: str) -> None:
        """Give these faults, in order, to the next requests whatever the rate."""
        unknown = set(kinds) - set(ALL_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        with self._lock:
            self.forced.extend(kinds)

    def schedule(self, number: int, kind: str) -> None:
        """Give `kind` to the `number`-th request from now (1 = the next one), whatever the rate."""
        if kind not in ALL_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self.scheduled[self.seen + number] = kind

    @property
    def failed(self) -> int:
        """How many requests got a fault instead of the vendor's own answer."""
        return sum(self.injected.values())

    # -- the handler --------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer like the wrapped fake, or with a fault."""
        with self._lock:
            self.seen += 1
            if self.seen in self.scheduled:
                kind = self.scheduled.pop(self.seen)
            elif self.forced:
                kind = self.forced.popleft()
            elif self.rate and self.rng.random() < self.rate and (self.limit is None or self.failed < self.limit):
                kind = self.rng.choice(self.kinds)
            else:
                kind = None
            # Drawn under the lock so that served fakes (one thread per request) stay reproducible.
            retry_after = self.rng.randint(1, self.max_retry_after)
            after_processing = self.rng.random() < 0.5
            variant = self.rng.randrange(1_000_000)
        if self.ignore_cursor:
            request = self.profile.first_page(request) or request
        if kind is None:
            return self.inner(request)
        try:
            response = self._inject(kind, request, retry_after, after_processing, variant)
        except (httpx.TransportError, DropConnection):
            self.answers.append((kind, None, None))
            raise
        self.answers.append((kind, response.status_code, response.headers.get("retry-after")))
        return response

    def _inject(self, kind: str, request: httpx.Request, retry_after: int, after_processing: bool,
                variant: int) -> httpx.Response:
        if kind in PAGING:
            response = self.inner(request)
            body = _json(response)
            rewrite = self.profile.repeat_cursor if kind == "repeat_cursor" else self.profile.short_page
            changed = rewrite(request, body, self.inner) if response.is_success and body is not None else None
            if changed is not None and self.pages_to_skip:
                with self._lock:
                    self.pages_to_skip -= 1
                return response
            if changed is None:
                if not self.refuse_non_pages:
                    return response
                self._count("503")  # not a page: a read is safe to refuse after the fact
                return _server_error(503)
            self._count(kind)
            return _replace_body(response, json.dumps(changed).encode())
        self._count(kind)
        if kind == "429_seconds":
            return self.profile.rate_limited(str(retry_after), self.clock())
        if kind == "429_date":
            moment = datetime.fromtimestamp(int(self.clock()) + 1 + retry_after, timezone.utc)
            return self.profile.rate_limited(format_datetime(moment, usegmt=True), self.clock())
        if kind in SERVER_ERRORS:
            if after_processing:
                self.inner(request)
            return _server_error(int(kind))
        if kind == "slow":
            response = self.inner(request)
            if self.served:
                time.sleep(self.slow_seconds)
                return response
            raise httpx.ReadTimeout("injected: no answer within the read timeout", request=request)
        if kind == "reset":
            if after_processing:
                self.inner(request)
            if self.served:
                raise DropConnection()
            if after_processing:
                raise httpx.RemoteProtocolError("injected: server disconnected without sending a response",
                                                request=request)
            raise httpx.ConnectError("injected: [Errno 104] Connection reset by peer", request=request)
        response = self.inner(request)
        if kind == "malformed_json":
            return _replace_body(response, MALFORMED[variant % len(MALFORMED)])
        if kind == "truncated_json":
            content = response.content
            if len(content) < 2:
                return _replace_body(response, MALFORMED[variant % len(MALFORMED)])
            return _replace_body(response, content[:max(1, len(content) // 2)])
        if kind == "wrong_shape":
            return _replace_body(response, json.dumps(reshape(_json(response), variant)).encode())
        raise ValueError(f"unknown fault kind {kind!r}")

    def _count(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] += 1


def reshape(body: Any, variant: int) -> Any:
    """A valid JSON value of another shape than `body`: wrapped, listed, emptied, or a field's type changed."""
    choices: list[Callable[[], Any]] = [
        lambda: {"data": body},
        lambda: [body],
        lambda: {},
        lambda: "OK",
        lambda: None,
    ]
    if isinstance(body, dict) and body:
        def retyped() -> Any:
            key = sorted(body)[variant % len(body)]
            value = body[key]
            replacement = {} if isinstance(value, list) else [] if isinstance(value, dict) else {"value": value}
            return {**body, key: replacement}

        def renamed() -> Any:
            return {f"{key}_v2": value for key, value in body.items()}

        choices += [retyped, renamed]
    if isinstance(body, list) and body:
        choices.append(lambda: {"items": body})
    return choices[variant % len(choices)]()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _server_error(status: int) -> httpx.Response:
    if status == 500:
        return httpx.Response(500, json={"message": "Internal server error (injected)"})
    # Gateways in front of an API answer their own HTML page.
    phrase = {502: "Bad Gateway", 503: "Service Unavailable"}[status]
    return httpx.Response(status, text=f"<html><body><h1>{status} {phrase}</h1></body></html>",
                          headers={"content-type": "text/html"})


def _replace_body(response: httpx.Response, content: bytes) -> httpx.Response:
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _DROP_HEADERS]
    if not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("content-type", "application/json"))
    return httpx.Response(response.status_code, headers=headers, content=content)
