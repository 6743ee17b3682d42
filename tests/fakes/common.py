"""What every vendor fake does the same way: recorded requests, fault injection, rate-limit windows, seeding.

A fake subclasses `FakeVendor`, implements `_handle(request)` (its routes and state) and
`error(status, message, fault)` (its own error body), and gets:

- `requests` (each a `Received`: method, decoded path, query, parsed body, headers) and
  `statuses`, and `calls(path, method)` to look them up;
- `fail(status, ...)`: answer the next matching request(s) with an injected `Fault`
  instead (`times`, `path` substring, `method`); a fake's own `Fault` subclass adds the
  fields of its error body;
- `RateWindow`: a rolling window of at most `limit` requests per `period` seconds, whose
  `hit()` says when a request is over the limit (the fake then answers 429, with
  `Retry-After` when `retry_after` is set);
- `moment(at)`: the time a seeded record gets (the fake's clock unless `at` says);
- `dispatch()`: the first of its `routes()` (method, path pattern, handler) that matches.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx


@dataclass
class Received:
    """One request a fake received, decoded for assertions."""

    method: str
    path: str
    params: dict[str, str]
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    """An answer to give instead of the real one, `times` times, to requests that match."""

    status: int
    times: int = 1
    path: str | None = None      # substring of the decoded path
    method: str | None = None
    message: str = "injected fault"
    headers: dict[str, str] = field(default_factory=dict)

    def take(self, method: str, path: str) -> bool:
        """True (and one use spent) when this fault answers a request to `method` `path`."""
        if self.times > 0 and (self.path is None or self.path in path) and self.method in (None, method):
            self.times -= 1
            return True
        return False


class Reply(Exception):
    """Raised inside a fake to answer at once with `response` (an error, usually)."""

    def __init__(self, response: httpx.Response):
        self.response = response


class RateWindow:
    """At most `limit` requests in any rolling `period` seconds (None: no limit), on the fake's clock.

    `limit` is read when each request comes (a callable), so a test may change a fake's limit at any time.
    """

    def __init__(self, limit: Callable[[], int | None], period: float, clock: Callable[[], float]):
        self.limit, self.period, self.clock = limit, period, clock
        self.recent: deque[float] = deque()

    def hit(self, now: float | None = None) -> bool:
        """Count a request (arriving at `now`, else the clock's now); False (not counted) when the window is full."""
        limit = self.limit()
        if not limit:
            return True
        now = self.clock() if now is None else now
        while self.recent and self.recent[0] <= now - self.period:
            self.recent.popleft()
        if len(self.recent) >= limit:
            return False
        self.recent.append(now)
        return True

    def __len__(self) -> int:
        return len(self.recent)


class FakeVendor:
    """The shared skeleton of a stateful vendor fake behind `handle(request)`."""

    fault_type: type[Fault] = Fault

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.requests: list[Received] = []
        self.statuses: list[int] = []  # the status of every answer, in order
        self.faults: list[Fault] = []
        self._lock = threading.RLock()

    # -- what tests do and look at --------------------------------------------------------------------

    def fail(self, status: int, **kwargs: Any) -> Fault:
        """Answer the next matching request(s) with `status` instead."""
        fault = self.fault_type(status, **kwargs)
        self.faults.append(fault)
        return fault

    def calls(self, path: str = "", method: str | None = None) -> list[Received]:
        """The requests whose decoded path contains `path` (and of `method`), in order."""
        # Locked, since an end-to-end test polls this while the server thread writes.
        with self._lock:
            return [r for r in self.requests if path in r.path and (method is None or r.method == method)]

    def moment(self, at: float | None = None) -> float:
        """When a seeded record happened: `at`, else now on the fake's clock."""
        return self.clock() if at is None else at

    # -- the HTTP side --------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request as the vendor would (the entry point for MockTransport and serve())."""
        with self._lock:
            try:
                response = self._handle(request)
            except Reply as reply:
                response = reply.response
            self.answered(response)
            self.statuses.append(response.status_code)
            return response

    def _handle(self, request: httpx.Request) -> httpx.Response:
        raise NotImplementedError

    def answered(self, response: httpx.Response) -> None:
        """Called with every answer before it goes out (a fake adds its rate-limit headers here)."""

    def receive(self, request: httpx.Request, path: str | None = None, *, headers: bool = True,
                body: Any = ..., params: dict[str, Any] | None = None) -> Received:
        """Record the request (decoded path, query, JSON body) and return it; bad JSON answers `bad_json()`.

        `path`, `body` and `params` replace what is read from the request where the vendor reads
        it otherwise (a path below a version prefix, a form body, repeated query names).
        """
        if body is ...:
            try:
                body = json.loads(request.content) if request.content else None
            except ValueError:
                self.requests.append(Received(request.method, path or unquote(request.url.path),
                                              dict(request.url.params.multi_items()), None))
                raise Reply(self.bad_json()) from None
        received = Received(request.method, path if path is not None else unquote(request.url.path),
                            params if params is not None else dict(request.url.params.multi_items()), body,
                            dict(request.headers) if headers else {})
        self.requests.append(received)
        return received

    def bad_json(self) -> httpx.Response:
        """The vendor's answer to a body that is not JSON."""
        return self.error(400, "invalid JSON body")

    def injected(self, received: Received) -> Fault | None:
        """The fault that answers this request instead, if any (one use of it spent)."""
        return next((f for f in self.faults if f.take(received.method, received.path)), None)

    def error(self, status: int, message: str, fault: Fault | None = None) -> httpx.Response:
        """The vendor's error answer (its own body shape); `fault` when it is an injected one."""
        return httpx.Response(status, json={"message": message}, headers=fault.headers if fault else {})

    def routes(self) -> list[tuple[str, str, Callable[..., httpx.Response]]]:
        """(method, path pattern, handler(params, body, *groups)) for `dispatch`."""
        return []

    def dispatch(self, received: Received, path: str | None = None) -> httpx.Response | None:
        """The answer of the first route matching the request (None: no route does)."""
        for method, pattern, handler in self.routes():
            match = re.fullmatch(pattern, received.path if path is None else path)
            if match and method == received.method:
                return handler(received.params, received.body, *match.groups())
        return None

    def refuse(self, status: int, message: str) -> None:
        """Answer at once with the vendor's error."""
        raise Reply(self.error(status, message))
